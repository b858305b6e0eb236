/* auth: the per-configuration authentication context (see auth.h). */
#include "shared/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"

/* No key configured: one made at start-up in a private temporary file, loaded, then deleted. */
static struct jwt_keyring *ephemeral_keyring(char *err, size_t errlen)
{
    char dir[] = "/tmp/authd-key.XXXXXX", path[64];
    struct jwt_keyring *kr = NULL;

    if (mkdtemp(dir) == NULL) {
        snprintf(err, errlen, "mkdtemp for an ephemeral signing key: %s", strerror(errno));
        return NULL;
    }
    snprintf(path, sizeof(path), "%s/key.pem", dir);
    if (jwt_key_generate(path, err, errlen) == 0) {
        char *paths[1] = {path};
        kr = jwt_keyring_load(paths, 1, err, errlen);
    }
    unlink(path);
    rmdir(dir);
    return kr;
}

/*
 * RFC 8414-style metadata of what exists: authd is not an OpenID provider (no ID tokens, no
 * authorization endpoint), so only the fields that are true are published.
 */
static char *render_discovery(const struct config *cfg)
{
    const char *iss = cfg->tokens.issuer;
    char jwks[1024], intro[1024], revoke[1024];

    snprintf(jwks, sizeof(jwks), "%s/.well-known/jwks.json", iss);
    snprintf(intro, sizeof(intro), "%s/v1/auth/introspect", iss);
    snprintf(revoke, sizeof(revoke), "%s/v1/auth/logout", iss);
    json_t *d = json_pack("{s:s, s:s, s:s, s:s, s:[s,s], s:[s]}", "issuer", iss, "jwks_uri", jwks,
                          "introspection_endpoint", intro, "revocation_endpoint", revoke,
                          "grant_types_supported", "password", "refresh_token",
                          "token_endpoint_auth_methods_supported", "none");
    char *text = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    return text;
}

struct auth *auth_new(const struct config *cfg, char *err, size_t errlen)
{
    struct auth *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->params = (struct password_params){(uint32_t)cfg->password.memory_kib,
                                         (uint32_t)cfg->password.iterations,
                                         (uint32_t)cfg->password.parallelism};
    if (cfg->tokens.signing_keys_count > 0)
        a->keys =
            jwt_keyring_load(cfg->tokens.signing_keys, cfg->tokens.signing_keys_count, err, errlen);
    else if ((a->keys = ephemeral_keyring(err, errlen)) != NULL)
        log_warn("tokens.signing_keys is empty: signing with an ephemeral key; tokens will not "
                 "survive a restart or reload (make one with `authd keys generate PATH`)");
    if (a->keys == NULL)
        goto fail;
    a->policy = password_policy_new(cfg->password.min_length, cfg->password.max_length,
                                    cfg->password.blocklist, err, errlen);
    if (a->policy == NULL)
        goto fail;
    a->store = store_driver_find(cfg->store.driver);
    if (a->store == NULL) {
        snprintf(err, errlen, "store.driver \"%s\" is not built in", cfg->store.driver);
        goto fail;
    }
    struct store *st = a->store->open(cfg, 1, err, errlen); /* runs migrations */
    if (st == NULL)
        goto fail;
    a->store->close(st);
    json_t *jwks = jwt_jwks(a->keys);
    a->jwks_json = jwks ? json_dumps(jwks, JSON_COMPACT) : NULL;
    json_decref(jwks);
    a->discovery_json = render_discovery(cfg);
    if (a->jwks_json == NULL || a->discovery_json == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (password_dummy_make(&a->params, a->dummy_phc) < 0) {
        snprintf(err, errlen, "argon2id with m=%d KiB t=%d p=%d failed", cfg->password.memory_kib,
                 cfg->password.iterations, cfg->password.parallelism);
        goto fail;
    }
    return a;
fail:
    auth_free(a);
    return NULL;
}

void auth_free(struct auth *a)
{
    if (a == NULL)
        return;
    jwt_keyring_free(a->keys);
    password_policy_free(a->policy);
    free(a->jwks_json);
    free(a->discovery_json);
    free(a);
}
