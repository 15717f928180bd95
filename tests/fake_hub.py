"""A tiny local stand-in for the Hugging Face hub HTTP API (no tests here), on 127.0.0.1.

It answers the endpoints ``huggingface_hub`` calls for ``HfApi.create_repo``, ``HfApi.upload_folder`` (with
every file sent inline as a "regular" git blob, so no LFS/Xet transfer is involved) and ``hf_hub_download``:

* ``POST /api/repos/create`` -> ``{"url"}`` (409 when the repo exists);
* ``POST /api/validate-yaml`` (a README's front matter must be a YAML mapping, else 400 with ``errors``);
* ``POST /api/models/<repo>/preupload/<rev>`` -> ``{"files": [{"path", "uploadMode": "regular", ...}]}``;
* ``POST /api/models/<repo>/commit/<rev>`` (NDJSON: a header line, then ``file`` lines with base64 content)
  -> ``{"commitUrl", "commitOid"}``;
* ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo id -> {"private", "commit", "files": {path: bytes}}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.card_metadata: list[dict] = []  # README front matter seen by /api/validate-yaml
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                path = urlsplit(self.path).path
                hub.requests.append(("POST", path, self.headers.get("Authorization")))
                body = self._body()
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    url = f"{hub.endpoint}/{repo}"
                    if repo in hub.repos:
                        return self._json(409, {"error": "You already created this model repo", "url": url})
                    hub.repos[repo] = {"private": data.get("visibility") == "private", "commit": "0" * 40, "files": {}}
                    return self._json(200, {"url": url, "name": repo})
                if path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    front = re.match(r"---\n(.*?)\n---\n", content, re.S)
                    meta = yaml.safe_load(front.group(1)) if front else None
                    if not isinstance(meta, dict):
                        return self._json(400, {"errors": [{"message": "front matter is not a YAML mapping"}]})
                    hub.card_metadata.append(meta)
                    return self._json(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not match:
                    return self._json(404, {"error": f"no route {path}"})
                repo, action = unquote(match.group(1)), match.group(2)
                if repo not in hub.repos:
                    return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json(200, {"files": modes})
                state = hub.repos[repo]
                for line in filter(None, body.split(b"\n")):
                    item = json.loads(line)
                    if item["key"] == "file":
                        state["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] != "header":
                        return self._json(400, {"error": f"unsupported commit operation {item['key']}"})
                state["commit"] = hashlib.sha1(json.dumps(sorted(state["files"])).encode() + body).hexdigest()
                return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{state['commit']}",
                                        "commitOid": state["commit"], "pullRequestUrl": None})

            def _resolve(self, head: bool) -> None:
                path = urlsplit(self.path).path
                hub.requests.append(("HEAD" if head else "GET", path, self.headers.get("Authorization")))
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not match or unquote(match.group(1)) not in hub.repos:
                    return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                state = hub.repos[unquote(match.group(1))]
                content = state["files"].get(unquote(match.group(3)))
                if content is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                etag = hashlib.sha256(content).hexdigest()
                self._send(200, content, {"X-Repo-Commit": state["commit"], "ETag": f'"{etag}"',
                                          "Content-Type": "application/octet-stream"}, head)

            def do_HEAD(self) -> None:  # noqa: N802
                self._resolve(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._resolve(head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
