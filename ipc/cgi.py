"""What a WAGI request carries from the supervisor to the runner.

The supervisor knows the connection (client address, HTTP version, the listen
address) and which route matched; the runner builds the CGI environment from
these facts. They travel in ``Invoke.params`` under ``cgi.`` keys, so the
Invoke message itself stays the same for every contract.
"""

from __future__ import annotations

import dataclasses

_PREFIX = "cgi."


class CgiParamsError(ValueError):
    """``Invoke.params`` lacks a fact a WAGI request needs."""


@dataclasses.dataclass(frozen=True, slots=True)
class CgiRequest:
    entrypoint: str  # the export to call
    matched_route: str  # X_MATCHED_ROUTE: the route's text, e.g. "/static/..."
    script_name: str  # SCRIPT_NAME
    raw_path_info: str  # X_RAW_PATH_INFO: the path past SCRIPT_NAME, still percent-encoded
    raw_path: str  # the request path as received (percent-encoded, no query)
    query: str  # QUERY_STRING, raw
    remote_addr: str  # client IP, no port
    server_name: str  # from Host, else the listen address
    server_port: str
    protocol: str  # SERVER_PROTOCOL, e.g. HTTP/1.1
    scheme: str  # http or https

    def to_params(self) -> dict[str, str]:
        return {_PREFIX + field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_params(cls, params: dict[str, str]) -> CgiRequest:
        """Raises:
        CgiParamsError: a fact is missing (a supervisor/runner mismatch)."""
        try:
            return cls(**{field.name: params[_PREFIX + field.name] for field in dataclasses.fields(cls)})
        except KeyError as exc:
            raise CgiParamsError(f"the request lacks the CGI fact {exc.args[0]!r}") from None
