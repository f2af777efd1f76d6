"""Parent/child clusters of agents: heartbeats up, delegation and pass-through down."""
