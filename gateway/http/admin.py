"""The operators' endpoint: `GET /admin/fairness`, the admission controller's fair-share state.

Mounted only when the keys file has a key of the `admin` class, and guarded
by it (APIKeyMiddleware answers 401 without a valid key, 403 for another
class). It shows each user holding a place: its name (a key's user,
`session:<digest>` or `client:<address>`), class, weight, counter (0 is next in
line), places, running and waiting requests and tokens served; never a key or
a session id.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from gateway.core.claims import Admission
from gateway.core.errors import Forbidden, error_response
from gateway.core.principal import Principal
from gateway.http.auth import PRINCIPAL_STATE


def add_admin_routes(app: FastAPI, admission: Admission) -> None:
    @app.get("/admin/fairness", include_in_schema=False)
    async def fairness(request: Request) -> Response:
        principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_STATE)
        if principal is None or not principal.admin:  # the key middleware checked; never rely on one guard
            return error_response(Forbidden("an admin API key is required"))
        return JSONResponse(await admission.afairness())
