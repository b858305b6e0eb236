/*
 * auth: everything the authentication API needs that is built once per configuration — the
 * JWT key ring, the password policy (with its blocklist), the argon2id parameters and the
 * dummy hash made with them, and the store driver (whose migrations it runs). Nothing of it is
 * process-wide: a refused or rolled-back reload leaves the serving generation's context as it was.
 *
 * Like the TLS context, the master builds it while validating a configuration, so a missing
 * key or an unreachable store refuses the reload and the old generation keeps serving; the
 * workers of a generation inherit it read-only through fork.
 */
#ifndef AUTHD_AUTH_H
#define AUTHD_AUTH_H

#include "shared/config.h"
#include "shared/jwt.h"
#include "shared/password.h"
#include "shared/store.h"

struct auth {
    struct jwt_keyring *keys;
    struct password_policy *policy;
    struct password_params params;
    char dummy_phc[PASSWORD_PHC_MAX]; /* unknown accounts verify against it (same cost) */
    const struct store_driver *store;
    char *jwks_json;      /* the JWK Set, rendered once */
    char *discovery_json; /* /.well-known/openid-configuration, rendered once */
};

/* Builds the context for `cfg`. NULL with a message in err. */
struct auth *auth_new(const struct config *cfg, char *err, size_t errlen);
void auth_free(struct auth *a);

#endif
