//! SQLite store: schema migrations and every SQL statement of the gateway live here.
