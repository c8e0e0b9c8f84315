"""Sans-I/O message layer shared by the supervisor and the runners (stdlib + msgpack only)."""
