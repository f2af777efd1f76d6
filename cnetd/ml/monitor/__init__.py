"""Per-version monitoring of served models: version labels, one-minute roll-ups kept in
SQLite, and input drift against the training data's `input_stats`."""
