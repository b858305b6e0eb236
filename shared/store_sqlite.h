/*
 * store_sqlite: the "sqlite" store driver (see store.h). One `struct store` is one SQLite
 * connection in WAL mode with its statements prepared at open; many processes, each with several
 * connections, may share one database file on one host. The schema is versioned in the file
 * (PRAGMA user_version) and migrated in one transaction.
 */
#ifndef AUTHD_STORE_SQLITE_H
#define AUTHD_STORE_SQLITE_H

#include "shared/store.h"

/* The schema version this code writes; a file with a higher one is refused. */
#define STORE_SQLITE_SCHEMA_VERSION 3

extern const struct store_driver store_sqlite_driver;

#endif
