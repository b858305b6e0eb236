/* route: names of the route identifiers (see route.h). */
#include "shared/route.h"

#include <stddef.h>

static const char *const names[ROUTE_COUNT] = {
    [ROUTE_UNMATCHED] = "unmatched",
    [ROUTE_HEALTHZ] = "healthz",
    [ROUTE_READYZ] = "readyz",
    [ROUTE_METRICS] = "metrics",
};

const char *route_name(enum route_id id)
{
    if ((int)id < 0 || id >= ROUTE_COUNT)
        return NULL;
    return names[id];
}
