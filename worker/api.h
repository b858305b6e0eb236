/*
 * api: the authentication API handlers (contract: /v1/auth/..., /v1/me..., /.well-known/...).
 *
 * A handler validates the request on the event loop (content type, JSON, sizes, bearer token),
 * then runs the blocking part — argon2id on the hashing pool, store calls on the store pool —
 * as one offload job, and answers from the job's completion on the loop. A full pool answers
 * 503 with Retry-After at once (admission control). Each offload thread keeps its own store
 * connection.
 */
#ifndef AUTHD_API_H
#define AUTHD_API_H

#include "worker/http.h"

void api_register(struct http_request *req);
void api_login(struct http_request *req);
void api_refresh(struct http_request *req);
void api_logout(struct http_request *req);
void api_introspect(struct http_request *req);
void api_me(struct http_request *req);
void api_me_password(struct http_request *req);
void api_me_sessions(struct http_request *req);
void api_me_session_delete(struct http_request *req);
void api_jwks(struct http_request *req);
/* Frees the verified-token cache (worker exit). */
void api_cache_clear(void);
/* /readyz once the workers are ready: pings the store on the store pool. */
void api_readiness(struct http_request *req);
void api_discovery(struct http_request *req);

#endif
