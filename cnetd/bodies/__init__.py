"""Request bodies as typed declarations (msgspec Structs): one declaration gives the check
of a body, with errors that name the field, and its schema in the OpenAPI document."""
