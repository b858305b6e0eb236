/*
 * router: maps (listener, method, path) to a handler and answers 404/405 itself. Handlers
 * reply through http_reply*() — at once, or later from an offload completion.
 */
#ifndef AUTHD_ROUTER_H
#define AUTHD_ROUTER_H

#include "worker/http.h"

void router_dispatch(struct http_request *req);

struct rl_check;
/* Adds RateLimit-Policy and RateLimit for the per-IP rules of c, and Retry-After when c refused. */
void router_limit_headers(struct http_request *req, const struct rl_check *c);

struct worker;
/* Recomputes the live/ready worker counts /healthz and /readyz answer with (per heartbeat). */
void router_refresh_health(struct worker *w);

#endif
