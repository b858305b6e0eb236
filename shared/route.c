/* route: names of the route identifiers (see route.h). */
#include "shared/route.h"

#include <stddef.h>

static const char *const names[ROUTE_COUNT] = {
    [ROUTE_UNMATCHED] = "unmatched",
    [ROUTE_HEALTHZ] = "healthz",
    [ROUTE_READYZ] = "readyz",
    [ROUTE_METRICS] = "metrics",
    [ROUTE_REGISTER] = "register",
    [ROUTE_LOGIN] = "login",
    [ROUTE_REFRESH] = "refresh",
    [ROUTE_LOGOUT] = "logout",
    [ROUTE_INTROSPECT] = "introspect",
    [ROUTE_ME] = "me",
    [ROUTE_ME_PASSWORD] = "me_password",
    [ROUTE_ME_SESSIONS] = "me_sessions",
    [ROUTE_ME_SESSION_DELETE] = "me_session_delete",
    [ROUTE_JWKS] = "jwks",
    [ROUTE_DISCOVERY] = "openid_configuration",
};

const char *route_name(enum route_id id)
{
    if ((int)id < 0 || id >= ROUTE_COUNT)
        return NULL;
    return names[id];
}
