"""The SUIT library: firmware update manifests (draft-ietf-suit-manifest-37)
as bytes in, verdicts and envelopes out.

What a recipient, a signer and a server share: bounded, canonical CBOR
decoding (``cbor``, ``codec``, ``model``, ``limits``), COSE_Sign1
(``cose``, ``keys``), authentication and trust anchors (``auth``), the
device a manifest is checked against (``device``), the command interpreter
(``interpreter``), the processor that decides (``processor``, with its
one-pass reader ``fastpath``), building and signing (``build``), readable
views (``show``) and the typed errors with their stable codes (``errors``).

Sans-I/O: no files, sockets, clocks or gRPC. It imports nothing from the
services and no generated protobuf code; the manifest service
(``services/manifest``), the ``fleetsuit manifest`` commands and a device
agent import it.

The import graph is layered (each module imports only those before it):
errors, limits, model, frozen, device; cbor; codec, cose; keys, auth;
interpreter; fastpath; processor; build, show.
"""
