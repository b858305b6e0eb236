/*
 * store_mongo: the "mongo" store driver (see store.h) on libmongoc. One client pool per process
 * and configuration, made on the first open in that process (so never inherited across fork),
 * shared by its connections and destroyed with the last one. A `struct store` takes a client
 * from the pool for each call, so the pool size bounds the concurrent store calls of a worker.
 * Document model and atomicity arguments: docs/architecture.md, "MongoDB store".
 */
#ifndef AUTHD_STORE_MONGO_H
#define AUTHD_STORE_MONGO_H

#include "shared/store.h"

/* The schema version this code writes ({name: "schema"} in authd_meta); newer ones are refused. */
#define STORE_MONGO_SCHEMA_VERSION 2
/* Sessions and rotated refresh-token hashes are deleted by TTL this long after their expiry. */
#define STORE_MONGO_TTL_GRACE 604800

extern const struct store_driver store_mongo_driver;

#endif
