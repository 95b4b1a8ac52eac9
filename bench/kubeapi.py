"""A small client for the bed's kube-apiserver, with the admin credentials of its kubeconfig:
JSON requests on kept-alive connections (one per thread), a watch, and the API server's own
/metrics (`apiserver_request_total`).

kubectl would do, but it costs ~0.3 s of CPU per invocation and re-reads whole lists; creating
and following 5,000 resources with it would measure kubectl more than the controller.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

# apiserver_request_total{code="200",...,resource="secrets",...,verb="GET",...} 12
_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# How long a request waits for an API server that does not answer (other work restarts it).
PATIENCE_S = 120


class Kube:
    def __init__(self, kubeconfig: str):
        cfg = json.loads(
            subprocess.run(
                ["kubectl", "--kubeconfig", kubeconfig, "config", "view", "--raw", "--minify", "-o", "json"],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout
        )  # fmt: skip
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.ssl = _ssl_context(cluster, user)
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self._local = threading.local()

    def connection(self, timeout: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def request(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        """One request on this thread's kept-alive connection, on a new one after a break. An
        API server that is away (restarted by other work) is waited for, up to PATIENCE_S."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + PATIENCE_S
        while True:
            conn = getattr(self._local, "conn", None) or self.connection()
            self._local.conn = conn
            try:
                conn.request(method, path, body=data, headers=self.headers)
                answer = conn.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def json(self, method: str, path: str, body=None, ok=(200, 201)) -> dict:
        status, data = self.request(method, path, body)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data)

    def watch(self, path: str, resource_version: str, timeout_s: int = 600):
        """Yields the events of a watch until it ends; the connection is its own."""
        query = f"watch=1&resourceVersion={resource_version}&timeoutSeconds={timeout_s}"
        sep = "&" if "?" in path else "?"
        conn = self.connection(timeout=timeout_s + 30)
        try:
            conn.request("GET", f"{path}{sep}{query}", headers=self.headers)
            answer = conn.getresponse()
            if answer.status != 200:
                raise RuntimeError(f"watch {path}: {answer.status} {answer.read()[:300]!r}")
            for line in answer:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def request_totals(self) -> dict[tuple[str, str, str, str], float]:
        """apiserver_request_total summed over codes: {(verb, group, resource, subresource): n}."""
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: {status}")
        return parse_request_totals(data.decode(errors="replace"))


def parse_request_totals(text: str) -> dict[tuple[str, str, str, str], float]:
    out: dict[tuple[str, str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        key = (
            labels.get("verb", ""),
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
        )
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def _ssl_context(cluster: dict, user: dict) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
    if cluster.get("certificate-authority-data"):
        ctx.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    if user.get("client-certificate") and user.get("client-key"):
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    elif user.get("client-certificate-data"):
        ctx.load_cert_chain(*_write_pair(user))
    return ctx


def _write_pair(user: dict) -> tuple[str, str]:
    paths = []
    for field in ("client-certificate-data", "client-key-data"):
        f = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)
        f.write(base64.b64decode(user[field]))
        f.close()
        paths.append(f.name)
    return paths[0], paths[1]
