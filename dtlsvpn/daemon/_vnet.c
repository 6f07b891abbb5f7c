/* The TUN's read side in C: dtlsvpn/vpn/vnet.py's ``segment`` with its checksums.
 *
 * Why: with TSO offered on the TUN (TUN_F_CSUM | TSO4 | TSO6), one read hands over up
 * to 64 KiB of one TCP flow instead of one segment, and the kernel neither segments nor
 * checksums it; the reader must.  In Python an internet checksum of 1 374 bytes costs
 * 5-6 us here, more than the kernel work it saves (README "Performance"), so TSO is
 * offered only when this file is built (daemon/tun.py).  The semantics are vnet.py's,
 * byte for byte, malformed frames included (tests/unit/test_vnet_compiled.py).
 *
 * Checksums (RFC 1071 §2): the one's complement sum is independent of byte order, so
 * the words are summed in the machine's order, 32 bits at a time into 64, reduced
 * modulo 0xFFFF (2^16 = 1 there) and stored in the machine's order; the checksum is
 * ``-sum mod 0xFFFF`` (0 for a sum that is a multiple of 0xFFFF), as vnet.checksum.
 */
#include "_vnet.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define VNET_HDR_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define TCP_PROTO 6
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

/* ``s`` plus the sum of ``p[:n]`` as 16-bit words (an odd last byte padded with zero). */
static uint64_t csum_add(const unsigned char *p, Py_ssize_t n, uint64_t s) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        s += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        s += w;
        p += 2;
        n -= 2;
    }
    if (n) { /* the high byte of a big-endian word */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        s += p[0];
#else
        s += (uint64_t)p[0] << 8;
#endif
    }
    return s;
}

/* Store the checksum that makes ``s`` verify at ``at`` (two bytes, unaligned); 0 as
 * 0xFFFF when ``mangle`` (vnet._complete: a UDP checksum of 0 means none). */
static void csum_store(unsigned char *at, uint64_t s, int mangle) {
    uint64_t t = s % 0xFFFF;
    uint16_t v = t ? (uint16_t)(0xFFFF - t) : (mangle ? 0xFFFF : 0);
    memcpy(at, &v, 2);
}

static void put_be16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

int vnet_complete(unsigned char *pkt, Py_ssize_t n, unsigned start, unsigned offset) {
    Py_ssize_t at = (Py_ssize_t)start + offset;
    if (at + 2 > n || (Py_ssize_t)start >= n)
        return -1;
    csum_store(pkt + at, csum_add(pkt + start, n - start, 0), 1);
    return 0;
}

/* vnet._segment_tcp: ``p[:size]`` (the packet after the header) cut into segments of
 * ``mss`` payload bytes, appended to ``out``; 0, or -1 with an exception set. */
static int segment_tcp(const unsigned char *p, Py_ssize_t size, int v4, Py_ssize_t mss,
                       PyObject *out) {
    Py_ssize_t ihl;
    if (v4) {
        if (size < 40 || p[0] >> 4 != 4)
            return 0;
        ihl = (p[0] & 0x0F) * 4;
    } else {
        if (size < 60 || p[0] >> 4 != 6 || p[6] != TCP_PROTO)
            return 0;
        ihl = 40;
    }
    if (ihl < 20 || ihl + 20 > size)
        return 0;
    Py_ssize_t thlen = (p[ihl + 12] >> 4) * 4;
    Py_ssize_t hl = ihl + thlen;
    if (thlen < 20 || hl > size)
        return 0;
    /* the pseudo-header's addresses and protocol (its length is added per segment) */
    uint64_t pseudo = csum_add(p + (v4 ? 12 : 8), v4 ? 8 : 32, htons(TCP_PROTO));
    uint32_t seq0 = (uint32_t)p[ihl + 4] << 24 | (uint32_t)p[ihl + 5] << 16 |
                    (uint32_t)p[ihl + 6] << 8 | p[ihl + 7];
    unsigned char flags = p[ihl + 13];
    unsigned ident = v4 ? (unsigned)p[4] << 8 | p[5] : 0;
    Py_ssize_t offset = hl;
    for (unsigned index = 0; offset < size; index++) {
        Py_ssize_t end = offset + mss < size ? offset + mss : size;
        Py_ssize_t clen = end - offset;
        PyObject *seg = PyBytes_FromStringAndSize(NULL, hl + clen);
        if (seg == NULL)
            return -1;
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(seg);
        memcpy(d, p, (size_t)hl);
        memcpy(d + hl, p + offset, (size_t)clen);
        unsigned char *tcp = d + ihl;
        unsigned char f = end >= size ? flags : (unsigned char)(flags & ~(TCP_FIN | TCP_PSH));
        if (index)
            f &= (unsigned char)~TCP_CWR;
        tcp[13] = f;
        uint32_t seq = seq0 + (uint32_t)(offset - hl);
        tcp[4] = (unsigned char)(seq >> 24);
        tcp[5] = (unsigned char)(seq >> 16);
        tcp[6] = (unsigned char)(seq >> 8);
        tcp[7] = (unsigned char)seq;
        tcp[16] = tcp[17] = 0;
        unsigned tcp_len = (unsigned)(thlen + clen);
        uint64_t sum = csum_add(tcp, thlen + clen, pseudo + htons((uint16_t)tcp_len));
        csum_store(tcp + 16, sum, 0);
        if (v4) {
            put_be16(d + 2, (unsigned)ihl + tcp_len);
            put_be16(d + 4, (ident + index) & 0xFFFF);
            d[10] = d[11] = 0;
            csum_store(d + 10, csum_add(d, ihl, 0), 0);
        } else {
            put_be16(d + 4, tcp_len);
        }
        int r = PyList_Append(out, seg);
        Py_DECREF(seg);
        if (r < 0)
            return -1;
        offset = end;
    }
    return 0;
}

PyObject *vnet_segment(PyObject *module, PyObject *frame) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *f = view.buf;
    Py_ssize_t n = view.len;
    PyObject *out = PyList_New(0);
    if (out == NULL || n <= VNET_HDR_LEN)
        goto done;
    unsigned flags = f[0], gso = f[1] & ~GSO_ECN;
    unsigned gso_size, csum_start, csum_offset; /* host byte order (legacy header) */
    uint16_t u;
    memcpy(&u, f + 4, 2);
    gso_size = u;
    memcpy(&u, f + 6, 2);
    csum_start = u;
    memcpy(&u, f + 8, 2);
    csum_offset = u;
    const unsigned char *pkt = f + VNET_HDR_LEN;
    Py_ssize_t size = n - VNET_HDR_LEN;
    if (gso == GSO_NONE) {
        PyObject *one = PyBytes_FromStringAndSize((const char *)pkt, size);
        if (one == NULL)
            goto fail;
        if (flags & F_NEEDS_CSUM &&
            vnet_complete((unsigned char *)PyBytes_AS_STRING(one), size, csum_start,
                          csum_offset) < 0) {
            Py_DECREF(one);
            goto done;
        }
        int r = PyList_Append(out, one);
        Py_DECREF(one);
        if (r < 0)
            goto fail;
    } else if ((gso == GSO_TCPV4 || gso == GSO_TCPV6) && gso_size) {
        if (segment_tcp(pkt, size, gso == GSO_TCPV4, gso_size, out) < 0)
            goto fail;
    }
done:
    PyBuffer_Release(&view);
    return out;
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(out);
    return NULL;
}
