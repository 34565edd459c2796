"""Query parameters that a route does not declare are refused on the routes that change things.

FastAPI ignores a query parameter that a route does not declare, so a misspelt option
(``paralel_count=4``) would silently leave its default in place on a batch that then runs for
hours. On ``POST``, ``PUT``, ``PATCH`` and ``DELETE`` such a request is a 400 that names the
unknown parameters and the accepted ones. Reads are left lenient: clients and proxies add
parameters of their own to ``GET`` requests (cache busters), and a read changes nothing.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from batchserve.engine.errors import BadRequest

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def known_query(request: Request) -> None:
    """The app's dependency: runs before each route's own, on every route."""
    if request.method not in MUTATING or not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    accepted = declared_query(route)
    unknown = sorted(set(request.query_params) - accepted)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise BadRequest(
            f"Unknown query parameter{'s' if len(unknown) > 1 else ''} {names} on "
            f"{request.method} {route.path}, which takes "
            + (", ".join(sorted(accepted)) if accepted else "no query parameters")
            + ". Check the spelling: a parameter this route does not know would change nothing.",
            unknown=unknown,
            accepted=sorted(accepted),
        )


def declared_query(route: APIRoute) -> frozenset[str]:
    """The query parameters of a route and of its dependencies, by the names clients send.
    (Found on each request that has any: a walk over a handful of objects.)"""
    names: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(field.alias for field in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)
