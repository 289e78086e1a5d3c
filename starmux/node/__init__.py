"""I/O shared by two or more roles: the node's relay link, the SQLite opener and
migration runner. The roles (relay, daemon, client) import this and the core,
never each other (DESIGN.md section 1); nothing here imports a role."""
