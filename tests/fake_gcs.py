"""An in-memory Cloud Storage for tests: `gs://` paths that never touch the local disk.

One object store (bucket/name -> bytes and a generation) with the two faces
through which the run reaches `gs://`:

- Python file operations (`etils.epath`, and so `promot_t5x.fs` and orbax's
  folder handling) through an fsspec file system registered for `gs://`
  (epath's fsspec backend, chosen with EPATH_USE_TF=false);
- TensorStore (orbax's array reads and writes) through a small HTTP server
  speaking the subset of the Cloud Storage JSON API that TensorStore's `gcs`
  kvstore driver uses (TENSORSTORE_GCS_HTTP_URL points it here).

Folders are as in Cloud Storage: implied by object names, plus the empty
`name/` marker objects that folder creation writes (as TensorFlow's GCS file
system does). Renames copy and delete object by object, as on GCS.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
from fsspec.spec import AbstractFileSystem


class ObjectStore:
  """bucket/name -> (bytes, generation), thread-safe."""

  def __init__(self):
    self.objects: dict[str, tuple[bytes, int, float]] = {}
    self.lock = threading.Lock()
    self._generation = itertools.count(1)
    self.requests: list[tuple[str, str]] = []  # (HTTP method, path) seen by the server

  def put(self, key: str, data: bytes) -> int:
    with self.lock:
      gen = next(self._generation)
      self.objects[key] = (bytes(data), gen, time.time())
      return gen

  def get(self, key: str) -> tuple[bytes, int, float] | None:
    with self.lock:
      return self.objects.get(key)

  def delete(self, key: str) -> bool:
    with self.lock:
      return self.objects.pop(key, None) is not None

  def keys(self, prefix: str = '') -> list[str]:
    with self.lock:
      return sorted(k for k in self.objects if k.startswith(prefix))


STORE = ObjectStore()


# -----------------------------------------------------------------------------
# The Python face: an fsspec file system for gs://.
# -----------------------------------------------------------------------------
class _WriteBuffer(io.BytesIO):
  def __init__(self, key: str, initial: bytes = b''):
    super().__init__()
    self.key = key
    self.write(initial)

  def close(self):
    if not self.closed:
      STORE.put(self.key, self.getvalue())
    super().close()


class FakeGCSFileSystem(AbstractFileSystem):
  protocol = ('gs', 'gcs')
  root_marker = ''
  cachable = False

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for p in ('gs://', 'gcs://'):
      if path.startswith(p):
        path = path[len(p):]
    return path.rstrip('/')

  def __init__(self, *args, **kwargs):
    kwargs.pop('finalize_on_close', None)
    super().__init__(*args, **kwargs)

  def _children(self, path: str) -> list[dict]:
    prefix = path + '/'
    out: dict[str, dict] = {}
    for key in STORE.keys(prefix):
      rest = key[len(prefix):]
      if not rest:
        continue  # the folder's own marker
      head, sep, _ = rest.partition('/')
      name = prefix + head
      if sep:
        out.setdefault(name, {'name': name, 'size': 0, 'type': 'directory'})
      else:
        data, gen, mtime = STORE.get(key)
        out[name] = {'name': name, 'size': len(data), 'type': 'file', 'mtime': mtime,
                     'generation': gen}
    return [out[k] for k in sorted(out)]

  def ls(self, path, detail=True, **kwargs):
    path = self._strip_protocol(path)
    info = self.info(path)
    entries = [info] if info['type'] == 'file' else self._children(path)
    return entries if detail else [e['name'] for e in entries]

  def info(self, path, **kwargs):
    path = self._strip_protocol(path)
    got = STORE.get(path)
    if got is not None:
      return {'name': path, 'size': len(got[0]), 'type': 'file', 'mtime': got[2]}
    if '/' not in path or STORE.keys(path + '/'):  # a bucket, or a folder
      return {'name': path, 'size': 0, 'type': 'directory'}
    raise FileNotFoundError(path)

  def mkdir(self, path, create_parents=True, **kwargs):
    path = self._strip_protocol(path)
    if STORE.get(path) is not None:
      raise FileExistsError(path)
    if '/' in path:
      STORE.put(path + '/', b'')

  def makedirs(self, path, exist_ok=False):
    path = self._strip_protocol(path)
    if not exist_ok and self.exists(path):
      raise FileExistsError(path)
    parts = path.split('/')
    for i in range(2, len(parts) + 1):  # bucket/a, bucket/a/b, ...
      sub = '/'.join(parts[:i])
      if STORE.get(sub + '/') is None:
        STORE.put(sub + '/', b'')

  def rmdir(self, path):
    path = self._strip_protocol(path)
    if [k for k in STORE.keys(path + '/') if k != path + '/']:
      raise OSError(f'{path} is not empty')
    STORE.delete(path + '/')

  def rm_file(self, path):
    path = self._strip_protocol(path)
    if not STORE.delete(path):
      raise FileNotFoundError(path)

  def rm(self, path, recursive=False, maxdepth=None):
    paths = path if isinstance(path, list) else [path]
    for p in paths:
      p = self._strip_protocol(p)
      if STORE.get(p) is not None:
        STORE.delete(p)
      elif recursive:
        keys = STORE.keys(p + '/')
        if not keys:
          raise FileNotFoundError(p)
        for k in keys:
          STORE.delete(k)
      elif self.isdir(p):
        raise IsADirectoryError(p)
      else:
        raise FileNotFoundError(p)

  def cp_file(self, path1, path2, **kwargs):
    src = STORE.get(self._strip_protocol(path1))
    if src is None:
      raise FileNotFoundError(path1)
    STORE.put(self._strip_protocol(path2), src[0])

  def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
    src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
    if STORE.get(src) is not None:
      self.cp_file(src, dst)
      STORE.delete(src)
      return
    keys = STORE.keys(src + '/')
    if not keys:
      raise FileNotFoundError(path1)
    for k in keys:  # object by object, as a GCS rename
      STORE.put(dst + k[len(src):], STORE.get(k)[0])
      STORE.delete(k)

  rename = mv

  def _open(self, path, mode='rb', **kwargs):
    path = self._strip_protocol(path)
    if 'r' in mode:
      got = STORE.get(path)
      if got is None:
        raise FileNotFoundError(path)
      return io.BytesIO(got[0])
    if 'a' in mode:
      got = STORE.get(path)
      return _WriteBuffer(path, got[0] if got else b'')
    return _WriteBuffer(path)


# -----------------------------------------------------------------------------
# TensorStore's face: the JSON API over HTTP.
# -----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'

  def log_message(self, *args):
    del args  # the test server writes no access log (BaseHTTPRequestHandler's is stderr)

  def _send(self, code: int, body: bytes = b'', headers: dict | None = None,
            content_type: str = 'application/json'):
    self.send_response(code)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _json(self, code: int, obj) -> None:
    self._send(code, json.dumps(obj).encode())

  def _error(self, code: int, message: str) -> None:
    self._json(code, {'error': {'code': code, 'message': message}})

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    return url.path, dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))

  def _meta(self, bucket: str, name: str, data: bytes, gen: int, mtime: float) -> dict:
    return {'kind': 'storage#object', 'bucket': bucket, 'name': name, 'size': str(len(data)),
            'generation': str(gen), 'metageneration': '1',
            'updated': time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(mtime))}

  def _preconditions_fail(self, query: dict, current: int | None) -> int | None:
    """The HTTP status for failed ifGeneration(Not)Match preconditions, or None."""
    gen = current or 0
    if 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != gen:
      return 412
    if 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == gen:
      return 304
    return None

  def _object(self, path: str):
    rest = path[len('/storage/v1/b/'):]
    bucket, _, name = rest.partition('/o/')
    return bucket, urllib.parse.unquote(name)

  def _read_body(self) -> bytes:
    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      chunks = []
      while True:
        size = int(self.rfile.readline().strip() or b'0', 16)
        if size == 0:
          self.rfile.readline()
          break
        chunks.append(self.rfile.read(size))
        self.rfile.readline()
      return b''.join(chunks)
    return self.rfile.read(int(self.headers.get('Content-Length') or 0))

  def do_GET(self):  # noqa: N802
    path, query = self._parse()
    STORE.requests.append(('GET', path))
    if not path.startswith('/storage/v1/b/'):
      return self._error(404, f'unknown path {path}')
    if '/o/' not in path and not path.endswith('/o'):  # a bucket's metadata
      bucket = path[len('/storage/v1/b/'):].strip('/')
      return self._json(200, {'kind': 'storage#bucket', 'name': bucket, 'id': bucket,
                              'location': 'US', 'storageClass': 'STANDARD'})
    if '/o/' not in path:  # list
      bucket = path[len('/storage/v1/b/'):].split('/')[0]
      prefix = f'{bucket}/{query.get("prefix", "")}'
      items = []
      for key in STORE.keys(prefix):
        name = key[len(bucket) + 1:]
        if 'startOffset' in query and name < query['startOffset']:
          continue
        if query.get('endOffset') and name >= query['endOffset']:
          continue
        data, gen, mtime = STORE.get(key) or (b'', 0, 0)
        items.append(self._meta(bucket, name, data, gen, mtime))
      return self._json(200, {'kind': 'storage#objects', 'items': items})
    bucket, name = self._object(path)
    got = STORE.get(f'{bucket}/{name}')
    if got is None:
      return self._error(404, f'No such object: {bucket}/{name}')
    data, gen, mtime = got
    failed = self._preconditions_fail(query, gen)
    if failed:
      return self._send(failed, headers={'x-goog-generation': str(gen)})
    if query.get('alt') != 'media':
      return self._json(200, self._meta(bucket, name, data, gen, mtime))
    headers = {'x-goog-generation': str(gen), 'x-goog-metageneration': '1',
               'x-goog-stored-content-length': str(len(data))}
    rng = self.headers.get('Range')
    if rng and rng.startswith('bytes='):
      start_s, _, end_s = rng[len('bytes='):].partition('-')
      if start_s == '':  # suffix: the last N bytes
        start, end = max(len(data) - int(end_s), 0), len(data) - 1
      else:
        start = int(start_s)
        end = min(int(end_s), len(data) - 1) if end_s else len(data) - 1
      if start >= len(data) and len(data) > 0:
        return self._send(416, headers=headers)
      headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
      return self._send(206, data[start:end + 1], headers, 'application/octet-stream')
    return self._send(200, data, headers, 'application/octet-stream')

  def do_POST(self):  # noqa: N802
    path, query = self._parse()
    STORE.requests.append(('POST', path))
    body = self._read_body()
    if not (path.startswith('/upload/storage/v1/b/') and query.get('uploadType') == 'media'):
      return self._error(400, f'unsupported upload {self.path}')
    bucket = path[len('/upload/storage/v1/b/'):].split('/')[0]
    name = query['name']
    key = f'{bucket}/{name}'
    with STORE.lock:
      current = STORE.objects.get(key)
    failed = self._preconditions_fail(query, current[1] if current else None)
    if failed:
      return self._error(412, 'precondition failed')
    gen = STORE.put(key, body)
    return self._json(200, self._meta(bucket, name, body, gen, time.time()))

  def do_DELETE(self):  # noqa: N802
    path, query = self._parse()
    STORE.requests.append(('DELETE', path))
    bucket, name = self._object(path)
    key = f'{bucket}/{name}'
    got = STORE.get(key)
    if got is None:
      return self._error(404, 'not found')
    if self._preconditions_fail(query, got[1]):
      return self._error(412, 'precondition failed')
    STORE.delete(key)
    self._send(204)


class FakeGCS:
  """Starts the HTTP face and registers the fsspec face; `env` is what TensorStore and epath need."""

  def __init__(self):
    self.store = STORE
    self.server = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    self.server.daemon_threads = True
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()
    self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
    for protocol in FakeGCSFileSystem.protocol:
      fsspec.register_implementation(protocol, FakeGCSFileSystem, clobber=True)

  @property
  def env(self) -> dict[str, str]:
    return {'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake-token',
            'STORAGE_EMULATOR_HOST': self.url,
            'EPATH_USE_TF': 'false'}

  def close(self):
    self.server.shutdown()
    self.server.server_close()
