/*
 * route: the identifiers of every HTTP route, shared by the worker's router (which maps paths
 * to them) and the metrics renderer (which labels counters with their names). Adding a route
 * means one line here and one in worker/router.c.
 */
#ifndef AUTHD_ROUTE_H
#define AUTHD_ROUTE_H

enum route_id {
    ROUTE_UNMATCHED = 0, /* 404/405, and errors before routing (431, 413, 400, 408) */
    ROUTE_HEALTHZ,
    ROUTE_READYZ,
    ROUTE_METRICS,
    ROUTE_REGISTER,
    ROUTE_LOGIN,
    ROUTE_REFRESH,
    ROUTE_LOGOUT,
    ROUTE_INTROSPECT,
    ROUTE_ME,
    ROUTE_ME_PASSWORD,
    ROUTE_ME_SESSIONS,
    ROUTE_ME_SESSION_DELETE,
    ROUTE_JWKS,
    ROUTE_DISCOVERY,
    ROUTE_COUNT_ = 32 /* room for the API routes without changing the segment layout */
};
#define ROUTE_COUNT ROUTE_COUNT_

/* Name used as the Prometheus `route` label; NULL for an unused id. */
const char *route_name(enum route_id id);

#endif
