"""The imperative shell: devices, the loop, the roles and the data path around the core.

Who owns what
-------------
- ``daemon.py`` ``Daemon``: the wiring.  Builds everything from the configuration and
  its ``Devices`` (``devices.py``: TUN, UDP ports, netlink, resolver, notifier; fakes
  in ``tests/fakes``), runs the one ``Loop``, reloads, tears down; owns the watchdog
  and the per-peer MTU debounce timers.
- ``loop.py`` ``Loop``: epoll over descriptors, the Timer heap, deferred callbacks,
  signals.  The only event loop: every deadline in the daemon is one of its Timers.
- ``peers.py`` ``PeerTable``: the single owner of peer ↔ association(s) ↔ address
  (``by_addr`` for the data path, ``owner(assoc)`` for events); ``Peer`` holds a peer's
  runtime and counters, read by the data path and ``snapshot.py``.
- ``client.py`` ``ClientRole`` + ``dialer.py`` ``Dialer`` (DOWN, DIALLING, HANDSHAKING,
  UP, BACKING_OFF): the client's socket, ``RekeyingClient``, tickets and redials;
  ``netwatch.py`` follows the local network (kernel notifications, failed sends →
  a new socket and a heartbeat, or a resumption), ``resolve.py`` looks the Endpoint up
  on a worker thread, ``fulltunnel.py`` the policy routing of a /0, ``dns.py`` the
  tunnel's resolvers, ``ifreload.py`` the ``[Interface]`` changes a reload applies.
- ``server.py`` ``ServerRole`` + ``binding.py`` (sans-I/O policy: renewal, replacement,
  rejection, moves): the listening port, the ``ServerEndpoint``, one Timer per
  association, ticket keys.
- ``fleet.py`` a server in a fleet behind one address: its CID layout (``ServerId``), the
  shared ticket-key file (one writer rotates, readers follow) and its status block.
- ``datapath.py`` ``Datapath``: the hot loops TUN ↔ UDP (see its pipeline header).
- ``tunmtu.py`` the TUN MTU and MSS clamp policy; ``mtu.py`` per-peer PMTU debounce;
  ``status.py`` the status socket and formats; ``snapshot.py`` what it shows;
  ``refusals.py`` failed handshakes in the operator's words, counted, rate-limited;
  ``startup.py`` the one-instance lock and start-up errors naming value, line, holder;
  ``forwarding.py`` the site-to-site IP forwarding check;
  ``settings.py`` the core's settings from the configuration; ``ticketstore.py``,
  ``systemd.py``, ``netlink.py``, ``tun.py``, ``udp.py`` the devices themselves.

How a packet travels
--------------------
Out: the TUN fd is readable → ``Datapath.client_tun``/``server_tun`` reads a batch →
``Router.route`` picks the peer (server: longest prefix of the destination) → MSS
clamp, the too-big rule → the peer's association ``protect``s each packet into one
record → ``UdpPort.send_batch`` on the peer's UDP port (one ``sendmsg`` per run of
equal-size records with UDP GSO).  In: the UDP fd is readable → ``client_udp``/
``server_udp`` reads a batch (``recv_batch``; GRO buffers split at the segment size) →
``RekeyingClient.receive_datagram`` / ``ServerEndpoint.receive`` returns the inner
packets → ``PeerTable.by_addr`` names the peer → ``Router.admit`` drops spoofed sources
→ MSS clamp → ``Tun.write_batch``.  Anything that is not data (handshake flights,
alerts, heartbeats, events) is the role's ``service``, deferred to the end of the loop
iteration when the core's ``needs_service`` says the slow path changed something (never
after data only); it also re-arms the association's Timer; timers that fire run
``handle_timer`` and the same service.
"""
