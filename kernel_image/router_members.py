"""The router's view of the replicas: their node and Raft view (probes), and their addresses
(a moved replica's new address, healed in the others or given by the operator)."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from notebookos.kernel import contract as c
from notebookos.kernel.config import ConfigError, parse_address
from notebookos.kernel.router_core import RouterCore, log


class Membership(RouterCore):
    async def probes(self) -> None:
        """Learn each replica's node and Raft view; heal a moved replica's address in the others."""
        while True:
            for r in self.replicas.values():
                if not r.alive:
                    continue
                sock = r.sockets["probe"]
                # Not kernel_info: IPython draws a banner tip from the user's random generator for it.
                if not self._send_raw(sock, [], self.session.serialize(self.session.msg(c.STATUS_REQUEST, {}))[1:]):
                    continue
                try:
                    if await sock.poll(1000):
                        parsed = self._parse(await sock.recv_multipart(), f"replica {r.rid} probe")
                        if parsed is not None and parsed[1]["header"]["msg_type"] == c.STATUS_REPLY:
                            info = parsed[1]["content"]
                            r.info = info
                            r.node = info.get("node") or r.node
                except zmq.ZMQError:
                    pass
            await self._heal_peers()
            await asyncio.sleep(1.0)

    async def _heal_peers(self) -> None:
        own = {r.rid: (r.info.get("peers") or {}).get(str(r.rid)) for r in self._alive() if r.info}
        for r in self._alive():
            peers = r.info.get("peers") or {}
            for rid, addr in own.items():
                if addr and rid != r.rid and peers.get(str(rid)) not in (None, addr):
                    a = parse_address(addr, "replica address")
                    log.info(
                        "replica %d sees replica %d at %s, which is now at %s: updating",
                        r.rid,
                        rid,
                        peers.get(str(rid)),
                        addr,
                    )
                    await self._ask(r, c.UPDATE_PEER_REQUEST, {"replica": rid, "host": a.host, "port": a.port}, 10)
                    return  # one committed update reaches every replica

    async def _update_peer(self, idents: list[bytes], msg: dict[str, Any]) -> None:
        """``{replica, jupyter: "host:port"?, raft: "host:port"?}``: a replica moved."""
        req = msg.get("content") or {}
        content: dict[str, Any] = {"status": "ok"}
        try:
            rid = int(req["replica"])
            if rid not in self.replicas:
                raise ValueError(f"unknown replica {rid}; this kernel has {sorted(self.replicas)}")
            if req.get("jupyter"):
                self._repoint(self.replicas[rid], parse_address(str(req["jupyter"]), "jupyter"))
            if req.get("raft"):
                a = parse_address(str(req["raft"]), "raft")
                others = [r for r in self._alive() if r.rid != rid]
                if not others:
                    # Nobody to tell now: a member that starts later has the complete membership
                    # from its environment, and probes heal any stale view (_heal_peers).
                    log.info("replica %d moved to %s; no other live replica to tell yet", rid, a)
                    self.session.send(
                        self.front["control"], c.UPDATE_PEER_REPLY, content, parent=msg["header"], ident=idents
                    )
                    return
                reply = await self._ask(
                    others[0], c.UPDATE_PEER_REQUEST, {"replica": rid, "host": a.host, "port": a.port}, 10
                )
                if reply is None:
                    raise TimeoutError("the replicas did not confirm the new address")
                content = reply["content"]
        except (KeyError, ValueError, RuntimeError, TimeoutError, ConfigError) as e:
            content = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        self.session.send(self.front["control"], c.UPDATE_PEER_REPLY, content, parent=msg["header"], ident=idents)
