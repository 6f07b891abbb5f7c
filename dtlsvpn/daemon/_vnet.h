/* The TUN's offloads in C (part of dtlsvpn.daemon._lane): internet checksums, the
 * cutting of a TSO super-packet (vpn/vnet.segment) and the coalescing of TCP segments
 * toward the TUN (vpn/gro.coalesce), exactly as the Python does them
 * (tests/shell/test_compiled_segment.py and test_compiled_coalesce.py).  _vnet.c. */
#ifndef DTLSVPN_VNET_H
#define DTLSVPN_VNET_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Complete the partial checksum of a NEEDS_CSUM packet in place: the 16 bits at
 * ``start + offset`` hold the pseudo-header sum, the rest of ``[start:]`` is added.
 * 0, or -1 when the offsets do not fit the packet (vnet.segment then returns []). */
int vnet_complete(unsigned char *pkt, Py_ssize_t n, unsigned start, unsigned offset);

/* segment(frame) -> list[bytes]: vnet.segment in C (module function of _lane). */
PyObject *vnet_segment(PyObject *module, PyObject *frame);

/* The same for the ``n`` bytes at ``f`` (the lane's read buffer: no copy first). */
PyObject *vnet_segment_frame(const unsigned char *f, Py_ssize_t n);

/* coalesce(packets) -> list[bytes]: vpn/gro.coalesce in C (module function of _lane). */
PyObject *vnet_coalesce(PyObject *module, PyObject *packets);

#endif
