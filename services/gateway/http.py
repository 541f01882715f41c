"""The device-facing HTTP/1.1 downloads: payloads by content id, from the
payload cache.

``GET`` and ``HEAD /v1/payloads/{cid}`` send the cached file with aiohttp's
``FileResponse`` (``sendfile``; ``Range``, 206 and 416 per RFC 9110 §14).
A payload is immutable (its URL is its digest), so its strong ETag is the
content id itself and it is ``Cache-Control: immutable``; the ETag
conditions (``If-Match``, ``If-None-Match``, an ETag ``If-Range``) are
answered here against that id, because FileResponse compares them with a tag
of its own made from the file's mtime and size. A device resuming a cut
download sends ``Range: bytes=N-`` with ``If-Range: "<cid>"``.

A miss is fetched through the cache first when the payload is being
prefetched already or ``may_fetch(cid)`` accepts it (the gateway accepts the
payloads of releases it knows); otherwise 404. Errors are JSON
``{"code", "message"}`` with the cache's stable codes.

Not here: what to prefetch or pin (the gateway service), the cache itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag
from aiohttp.log import access_logger
from prometheus_client import CollectorRegistry, Counter

from services.gateway.cache import (
    BadContentId,
    BlobUnavailable,
    CacheFull,
    CacheWriteError,
    CorruptBlob,
    PayloadCache,
    parse_content_id,
)

PAYLOAD_ROUTE = "/v1/payloads/{cid}"
HEALTH_ROUTE = "/healthz"
# Only used when sendfile is not available (FileResponse then reads chunks).
SEND_CHUNK_BYTES = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"
_ETAG_CONDITIONS = (hdrs.IF_MATCH, hdrs.IF_NONE_MATCH, hdrs.IF_RANGE)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.download_bytes = Counter(
            "fleetsuit_gateway_download_bytes",
            "Payload bytes sent to devices (the length of each full or ranged answer)",
            registry=registry,
        )
        self.downloads = Counter(
            "fleetsuit_gateway_downloads",
            "Payload requests by HTTP status (aborted: the device went away mid-answer)",
            ["code"],
            registry=registry,
        )


class _PayloadFile(web.FileResponse):
    """A FileResponse whose ETag stays the content id (FileResponse sets an
    mtime-size tag just before it sends the headers)."""

    def __init__(self, path: Path, cid: str) -> None:
        super().__init__(
            path,
            chunk_size=SEND_CHUNK_BYTES,
            headers={hdrs.CACHE_CONTROL: IMMUTABLE, hdrs.CONTENT_TYPE: OCTET_STREAM},
        )
        self._cid = cid
        self.headers[hdrs.ETAG] = _quoted(cid)

    @property
    def etag(self) -> ETag | None:
        return ETag(value=self._cid)

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        self.headers[hdrs.ETAG] = _quoted(self._cid)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            # The handler sent it already (to count the bytes and keep the
            # file from eviction meanwhile); FileResponse.prepare is not
            # idempotent and would send the file a second time.
            return await web.StreamResponse.prepare(self, request)
        return await super().prepare(request)


def build_http_app(
    cache: PayloadCache,
    *,
    may_fetch: Callable[[str], bool] | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The download app; ``may_fetch(cid)`` says whether a miss may be fetched
    from the source (None: only payloads already being fetched)."""
    metrics = HttpMetrics(registry if registry is not None else CollectorRegistry())
    handler = _Downloads(cache, may_fetch, metrics)
    app = web.Application()
    app.router.add_get(PAYLOAD_ROUTE, handler.payload)  # HEAD too (allow_head)
    app.router.add_get(HEALTH_ROUTE, _healthz)
    return app


async def start_http(
    app: web.Application, host: str, port: int, *, access_log: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one); returns the
    runner (``await runner.cleanup()`` stops it) and the bound port. Access
    logging is off unless asked for: a log line per request costs throughput."""
    runner = web.AppRunner(app, access_log=access_logger if access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return runner, int(bound[1])


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class _Downloads:
    def __init__(
        self,
        cache: PayloadCache,
        may_fetch: Callable[[str], bool] | None,
        metrics: HttpMetrics,
    ) -> None:
        self._cache = cache
        self._may_fetch = may_fetch
        self._metrics = metrics

    async def payload(self, request: web.Request) -> web.StreamResponse:
        code = "500"
        try:
            resp, aborted = await self._payload(request)
            code = "aborted" if aborted else str(resp.status)
            return resp
        finally:
            self._metrics.downloads.labels(code).inc()

    async def _payload(self, request: web.Request) -> tuple[web.StreamResponse, bool]:
        """The answer, and whether the device went away while it was sent
        (the framework's own end-of-answer write then fails quietly too)."""
        cid = request.match_info["cid"]
        try:
            parse_content_id(cid)
        except BadContentId as exc:
            return _error(400, exc.code, str(exc)), False
        if self._cache.path(cid) is None:
            if not self._cache.is_fetching(cid) and not (
                self._may_fetch is not None and self._may_fetch(cid)
            ):
                return _error(404, "NOT_FOUND", f"{cid} is not cached at this gateway"), False
            failed = await self._fetch(cid)
            if failed is not None:
                return failed, False
        early = _check_etag_conditions(request, cid)
        if early is not None:
            return early, False
        with self._cache.hold(cid) as path:
            if path is None:  # evicted between the fetch and now
                return _unavailable(f"{cid} was evicted; ask again", 1.0), False
            resp = _PayloadFile(path, cid)
            try:
                await resp.prepare(_without_etag_conditions(request, cid))
            except ConnectionError:
                return resp, True
        if request.method != hdrs.METH_HEAD and resp.status in (200, 206):
            self._metrics.download_bytes.inc(resp.content_length or 0)
        return resp, False

    async def _fetch(self, cid: str) -> web.Response | None:
        """None once ``cid`` is cached, else the error answer."""
        try:
            await self._cache.ensure(cid)
        except CacheFull as exc:
            return _error(507, exc.code, str(exc))
        except CacheWriteError as exc:
            return _error(507 if exc.disk_full else 500, exc.code, str(exc))
        except BlobUnavailable as exc:
            return _unavailable(str(exc), exc.retry_after_s)
        except CorruptBlob as exc:
            return _error(502, exc.code, str(exc))
        return None


def _check_etag_conditions(request: web.Request, cid: str) -> web.Response | None:
    """RFC 9110 §13.2.2 order: If-Match, then If-None-Match (304 for GET and
    HEAD). The payload never changes, so its one tag is its id."""
    headers = request.headers
    if hdrs.IF_MATCH in headers and not _tag_matches(headers[hdrs.IF_MATCH], cid, weak=False):
        return web.Response(status=412, headers={hdrs.ETAG: _quoted(cid)})
    if hdrs.IF_NONE_MATCH in headers and _tag_matches(headers[hdrs.IF_NONE_MATCH], cid, weak=True):
        return web.Response(
            status=304, headers={hdrs.ETAG: _quoted(cid), hdrs.CACHE_CONTROL: IMMUTABLE}
        )
    return None


def _without_etag_conditions(request: web.Request, cid: str) -> web.BaseRequest:
    """The request FileResponse sees: the ETag conditions are answered here;
    an If-Range naming another tag means "send it all" (RFC 9110 §13.1.5), so
    its Range goes too. A date If-Range is FileResponse's to judge."""
    headers = request.headers
    if not any(name in headers for name in _ETAG_CONDITIONS):
        return request
    kept = headers.copy()
    for name in (hdrs.IF_MATCH, hdrs.IF_NONE_MATCH):
        kept.popall(name, None)
    if_range = headers.get(hdrs.IF_RANGE, "").strip()
    if if_range.startswith(('"', 'W/"')):
        # §13.1.5: If-Range needs a strong comparison; a weak tag never matches.
        if if_range != _quoted(cid):
            kept.popall(hdrs.RANGE, None)
        kept.popall(hdrs.IF_RANGE, None)
    return request.clone(headers=kept)


def _tag_matches(header: str, cid: str, *, weak: bool) -> bool:
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return True
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        if tag == _quoted(cid):
            return True
    return False


def _quoted(cid: str) -> str:
    return f'"{cid}"'


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _unavailable(message: str, retry_after_s: float) -> web.Response:
    resp = _error(503, "BLOB_UNAVAILABLE", message)
    resp.headers[hdrs.RETRY_AFTER] = str(max(1, math.ceil(retry_after_s)))
    return resp
