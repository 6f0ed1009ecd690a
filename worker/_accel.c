/* The worker's optional compiled accelerator (DESIGN.md §4): the hot loops of the data
 * path, byte for byte what the pure-Python reference computes.
 *
 *   split_frame(frame)  worker/proto/offload.py split_frame: one read from a
 *                       vnet-header tun with TSO on -> IP packets with full checksums
 *   coalesce(packets)   worker/proto/offload.py coalesce: a burst of IP packets from the
 *                       server as tun frames, in-order TCP segments joined into
 *                       super-packets (each frame whole: vnet header, header, payloads)
 *   split_mmsg(...)     worker/io/mmsg.py BatchReceiver.datagrams: what one recvmmsg
 *                       brought (the call itself stays in Python), GRO trains split
 *   Gcm(key, salt)      worker/proto/dtls_crypto.py GcmProtection: DTLS AES-GCM records
 *                       sealed and opened with one OpenSSL cipher context per direction
 *                       and epoch, kept across records (cryptography's AEAD builds a new
 *                       one on every call)
 *   cstp_data_frames    worker/proto/cstp.py encode_data_frames: CSTP DATA frames
 *   cstp_data_pairs     worker/proto/cstp.py CstpDecoder: a run of DATA frames read
 *   TlsRecords(...)     worker/io/tls.py TlsStream: a burst of TLS records written or
 *                       read in one call, on pyOpenSSL's own SSL object
 *
 * Pure computation on the caller's buffers: no system call once imported. The module's
 * import does all of OpenSSL's one-time work (library set-up without reading a
 * configuration file, fetching the ciphers), before the worker's sandbox closes; a
 * cipher context afterwards is memory only. Malformed input raises ValueError with the
 * reference's meaning (the caller drops the frame); a record that does not
 * authenticate gives None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include <sys/socket.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define VNET_HDR_LEN 10
#define NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define TCP_PROTO 6
#define FIN 0x01
#define PSH 0x08
#define CWR 0x80

/* Ones'-complement sum of data read as big-endian 16-bit words (an odd tail padded
 * with a zero byte), folded into 1..0xFFFF, or 0 for no data or all zeros. */
static uint32_t be_sum(const unsigned char *p, Py_ssize_t n)
{
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t lo = w & 0xFFFFFFFFu, hi = w >> 32;
        acc += lo + hi;
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        acc += w;
    }
    if (i < n)
        acc += p[i]; /* the tail byte is the high byte of a big-endian word: native low */
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    /* native little-endian words: swap the folded sum into big-endian order */
#if PY_LITTLE_ENDIAN
    acc = ((acc & 0xFF) << 8) | (acc >> 8);
#endif
    return (uint32_t)acc;
}

/* The checksum field for a total (any size) over everything but the field:
 * the reference's 0xFFFF - (total % 0xFFFF or 0xFFFF). */
static uint16_t checksum_field(uint64_t total)
{
    while (total >> 16)
        total = (total & 0xFFFF) + (total >> 16);
    if (total == 0)
        total = 0xFFFF;
    return (uint16_t)(0xFFFF - total);
}

static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static PyObject *refuse(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return NULL;
}

static PyObject *one_packet_list(const unsigned char *p, Py_ssize_t n)
{
    PyObject *packet = PyBytes_FromStringAndSize((const char *)p, n);
    if (packet == NULL)
        return NULL;
    PyObject *out = PyList_New(1);
    if (out == NULL) {
        Py_DECREF(packet);
        return NULL;
    }
    PyList_SET_ITEM(out, 0, packet);
    return out;
}

/* A CHECKSUM_PARTIAL packet: the field holds the pseudo-header's sum; sum from start
 * to the end and store the complement there (0 becomes 0xFFFF for UDP). */
static PyObject *complete_checksum(const unsigned char *p, Py_ssize_t n, Py_ssize_t start,
                                   Py_ssize_t offset)
{
    Py_ssize_t at = start + offset;
    if (at + 2 > n || start < 20)
        return refuse("checksum outside the packet");
    PyObject *out = one_packet_list(p, n);
    if (out == NULL)
        return NULL;
    unsigned char *q = (unsigned char *)PyBytes_AS_STRING(PyList_GET_ITEM(out, 0));
    uint16_t check = checksum_field(be_sum(p + start, n - start));
    if (check == 0 && offset == 6)
        check = 0xFFFF;
    put16(q + at, check);
    return out;
}

/* Cut a TCP super-packet into segments of mss payload bytes (tcp_gso_segment). */
static PyObject *segment(const unsigned char *p, Py_ssize_t n, int ipv4, Py_ssize_t mss)
{
    Py_ssize_t l4;
    const unsigned char *addresses;
    Py_ssize_t address_len;
    if (ipv4) {
        if (n < 20 || p[0] >> 4 != 4)
            return refuse("TCPv4 GSO frame without an IPv4 header");
        l4 = (p[0] & 0x0F) * 4;
        if (l4 < 20 || p[9] != TCP_PROTO)
            return refuse("TCPv4 GSO frame that is not TCP");
        addresses = p + 12;
        address_len = 8;
    }
    else {
        if (n < 40 || p[0] >> 4 != 6 || p[6] != TCP_PROTO)
            return refuse("TCPv6 GSO frame that is not plain IPv6 + TCP");
        l4 = 40;
        addresses = p + 8;
        address_len = 32;
    }
    if (n < l4 + 20)
        return refuse("GSO frame shorter than its TCP header");
    Py_ssize_t header_len = l4 + (p[l4 + 12] >> 4) * 4;
    Py_ssize_t payload_len = n - header_len;
    if (header_len < l4 + 20 || payload_len <= 0 || mss <= 0)
        return refuse("GSO frame with a bad TCP header, no payload or no MSS");
    if (payload_len <= mss)
        mss = payload_len;
    Py_ssize_t count = (payload_len + mss - 1) / mss;
    uint32_t ip_id = ipv4 ? get16(p + 4) : 0;
    uint32_t seq = get32(p + l4 + 4);
    unsigned char flags = p[l4 + 13];
    uint64_t address_sum = be_sum(addresses, address_len) + TCP_PROTO;
    Py_ssize_t tcp_header_len = header_len - l4;
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t start = header_len + i * mss;
        Py_ssize_t size = n - start < mss ? n - start : mss;
        PyObject *seg = PyBytes_FromStringAndSize(NULL, header_len + size);
        if (seg == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, seg);
        unsigned char *q = (unsigned char *)PyBytes_AS_STRING(seg);
        memcpy(q, p, header_len);
        memcpy(q + header_len, p + start, size);
        if (ipv4) {
            put16(q + 2, (uint32_t)(header_len + size));
            put16(q + 4, (ip_id + (uint32_t)i) & 0xFFFF);
            q[10] = q[11] = 0;
            put16(q + 10, checksum_field(be_sum(q, l4)));
        }
        else {
            put16(q + 4, (uint32_t)(tcp_header_len + size));
        }
        put32(q + l4 + 4, seq + (uint32_t)(i * mss));
        unsigned char f = flags;
        if (i)
            f &= (unsigned char)~CWR;
        if (i != count - 1)
            f &= (unsigned char)~(FIN | PSH);
        q[l4 + 13] = f;
        q[l4 + 16] = q[l4 + 17] = 0;
        uint64_t total = address_sum + (uint64_t)(tcp_header_len + size) +
                         be_sum(q + l4, tcp_header_len) + be_sum(q + header_len, size);
        put16(q + l4 + 16, checksum_field(total));
    }
    return out;
}

static PyObject *split_frame(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *f = view.buf;
    Py_ssize_t n = view.len;
    PyObject *result;
    if (n < VNET_HDR_LEN) {
        result = refuse("frame shorter than its virtio-net header");
        goto done;
    }
    /* struct virtio_net_hdr in native byte order (the tun's legacy default) */
    uint16_t gso_size, csum_start, csum_offset;
    memcpy(&gso_size, f + 4, 2);
    memcpy(&csum_start, f + 6, 2);
    memcpy(&csum_offset, f + 8, 2);
    int gso = f[1] & ~GSO_ECN;
    const unsigned char *packet = f + VNET_HDR_LEN;
    Py_ssize_t size = n - VNET_HDR_LEN;
    if (gso == GSO_NONE) {
        if (f[0] & NEEDS_CSUM)
            result = complete_checksum(packet, size, csum_start, csum_offset);
        else
            result = one_packet_list(packet, size);
    }
    else if (gso == GSO_TCPV4 || gso == GSO_TCPV6) {
        result = segment(packet, size, gso == GSO_TCPV4, gso_size);
    }
    else {
        result = refuse("GSO type that was never enabled");
    }
done:
    PyBuffer_Release(&view);
    return result;
}



/* -- download: in-order TCP segments -> one super-packet per flow and burst ---------- */

#define MAX_SUPER 65535
#define MAX_SEGMENTS 64

typedef struct {
    Py_ssize_t first;     /* index of the first segment in the burst */
    Py_ssize_t last;      /* index of the last one; next[] links them */
    int l4, header_len, nparts, push, closed;
    Py_ssize_t mss, size;
    uint32_t next_seq, next_id;
    uint64_t payload_sum; /* mod 0xFFFF */
} Run;

typedef struct {
    PyObject *packets; /* the burst (borrowed) */
    Py_ssize_t *next;  /* next segment of the same run */
    Run *runs;
    Py_ssize_t nruns;
    PyObject *index;   /* flow key -> run number, in the reference's dict order */
    PyObject *out;
} Coalescing;

static const unsigned char *pkt(Coalescing *c, Py_ssize_t i, Py_ssize_t *n)
{
    PyObject *p = PyList_GET_ITEM(c->packets, i);
    *n = PyBytes_GET_SIZE(p);
    return (const unsigned char *)PyBytes_AS_STRING(p);
}

static uint64_t fold(uint64_t total)
{
    while (total >> 16)
        total = (total & 0xFFFF) + (total >> 16);
    return total;
}

/* What the payload sums to if the segment's checksum is right (offload.py's Coalescer):
 * addresses and TCP header from start to header_len, the pseudo-header's rest. */
static uint64_t payload_sum_of(const unsigned char *p, Py_ssize_t n, int start, int l4,
                               int header_len)
{
    uint64_t known = fold(be_sum(p + start, header_len - start) + TCP_PROTO + (uint64_t)(n - l4));
    return 0xFFFF - known;
}

/* offload.py _mergeable: 1 and the fields of a TCP data segment that may join a run. */
static int mergeable(const unsigned char *p, Py_ssize_t n, int *l4, int *header_len,
                     uint64_t *payload_sum)
{
    int start;
    if (n < 60)
        return 0;
    if (p[0] == 0x45) {
        if (p[9] != TCP_PROTO || (p[6] & 0x3F) || p[7] || get16(p + 2) != n)
            return 0;
        if (be_sum(p, 20) != 0xFFFF)
            return 0;
        *l4 = 20;
        start = 12;
    }
    else if (p[0] >> 4 == 6) {
        if (p[6] != TCP_PROTO || get16(p + 4) != n - 40)
            return 0;
        *l4 = 40;
        start = 8;
    }
    else {
        return 0;
    }
    *header_len = *l4 + (p[*l4 + 12] >> 4) * 4;
    if (*header_len < *l4 + 20 || *header_len >= n)
        return 0;
    if (p[*l4 + 13] & ~(PSH | 0x10))
        return 0;
    *payload_sum = payload_sum_of(p, n, start, *l4, *header_len);
    return 1;
}

/* offload.py _flow_key: addresses and ports of a TCP packet, or NULL (None). */
static PyObject *flow_key(const unsigned char *p, Py_ssize_t n)
{
    if (n < 24)
        Py_RETURN_NONE;
    int version = p[0] >> 4;
    if (version == 4 && p[9] == TCP_PROTO) {
        Py_ssize_t l4 = (p[0] & 0x0F) * 4, ports = n - l4 < 0 ? 0 : n - l4 > 4 ? 4 : n - l4;
        unsigned char key[12];
        memcpy(key, p + 12, 8);
        memcpy(key + 8, p + (l4 < n ? l4 : n), ports);
        return PyBytes_FromStringAndSize((const char *)key, 8 + ports);
    }
    if (version == 6 && n >= 44 && p[6] == TCP_PROTO)
        return PyBytes_FromStringAndSize((const char *)p + 8, 36);
    Py_RETURN_NONE;
}

static int emit(Coalescing *c, PyObject *frame)
{
    if (frame == NULL)
        return -1;
    int failed = PyList_Append(c->out, frame);
    Py_DECREF(frame);
    return failed;
}

static PyObject *plain_frame(const unsigned char *p, Py_ssize_t n)
{
    PyObject *frame = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + n);
    if (frame != NULL) {
        memset(PyBytes_AS_STRING(frame), 0, VNET_HDR_LEN);
        memcpy(PyBytes_AS_STRING(frame) + VNET_HDR_LEN, p, n);
    }
    return frame;
}

/* offload.py _Run.pieces, joined. */
static PyObject *run_frame(Coalescing *c, Run *r)
{
    Py_ssize_t n;
    const unsigned char *first = pkt(c, r->first, &n);
    if (r->nparts == 1)
        return plain_frame(first, n);
    int l4 = r->l4, hl = r->header_len;
    PyObject *frame = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + r->size);
    if (frame == NULL)
        return NULL;
    unsigned char *f = (unsigned char *)PyBytes_AS_STRING(frame);
    uint16_t vnet[5] = {(uint16_t)(l4 == 20 ? GSO_TCPV4 : GSO_TCPV6) << 8, (uint16_t)hl,
                        (uint16_t)r->mss, 0, 0};
    memcpy(f, vnet, VNET_HDR_LEN); /* flags 0, gso_type, hdr_len, gso_size, csum 0, 0 */
    f[0] = 0;
    f[1] = l4 == 20 ? GSO_TCPV4 : GSO_TCPV6;
    unsigned char *h = f + VNET_HDR_LEN;
    memcpy(h, first, hl);
    if (r->push)
        h[l4 + 13] |= PSH;
    Py_ssize_t tcp_len = r->size - l4;
    const unsigned char *addresses;
    int address_len;
    if (l4 == 20) {
        put16(h + 2, (uint32_t)r->size);
        h[10] = h[11] = 0;
        put16(h + 10, checksum_field(be_sum(h, 20)));
        addresses = first + 12;
        address_len = 8;
    }
    else {
        put16(h + 4, (uint32_t)tcp_len);
        addresses = first + 8;
        address_len = 32;
    }
    h[l4 + 16] = h[l4 + 17] = 0;
    uint64_t total = be_sum(addresses, address_len) + TCP_PROTO + (uint64_t)tcp_len +
                     be_sum(h + l4, hl - l4) + r->payload_sum;
    put16(h + l4 + 16, checksum_field(total));
    unsigned char *q = h + hl;
    for (Py_ssize_t i = r->first;; i = c->next[i]) {
        Py_ssize_t m;
        const unsigned char *p = pkt(c, i, &m);
        memcpy(q, p + hl, m - hl);
        q += m - hl;
        if (i == r->last)
            break;
    }
    return frame;
}

/* offload.py _Run.try_join. */
static int try_join(Coalescing *c, Run *r, Py_ssize_t i, const unsigned char *p, Py_ssize_t n)
{
    int hl = r->header_len, l4 = r->l4;
    Py_ssize_t size = n - hl;
    if (r->closed || size <= 0 || size > r->mss || r->size + size > MAX_SUPER ||
        r->nparts >= MAX_SEGMENTS)
        return 0;
    Py_ssize_t m;
    const unsigned char *f = pkt(c, r->first, &m);
    /* every header byte as the first segment's, but the fields that vary per segment */
    for (int k = 0; k < hl; k++) {
        if (k == l4 + 4) { /* sequence number */
            k += 3;
            continue;
        }
        if (k == l4 + 16) { /* TCP checksum */
            k += 1;
            continue;
        }
        if (k == l4 + 13) {
            if ((p[k] ^ f[k]) & ~PSH)
                return 0;
            continue;
        }
        if (l4 == 20 && (k == 2 || k == 4 || k == 10)) { /* length, ID, checksum */
            k += 1;
            continue;
        }
        if (l4 == 40 && k == 4) { /* payload length */
            k += 1;
            continue;
        }
        if (p[k] != f[k])
            return 0;
    }
    if (get32(p + l4 + 4) != r->next_seq)
        return 0;
    if (l4 == 20) {
        if (get16(p + 2) != n || get16(p + 4) != r->next_id || be_sum(p, 20) != 0xFFFF)
            return 0;
        r->next_id = (r->next_id + 1) & 0xFFFF;
    }
    else if (get16(p + 4) != n - 40) {
        return 0;
    }
    r->payload_sum = fold(r->payload_sum + payload_sum_of(p, n, l4 == 20 ? 12 : 8, l4, hl));
    c->next[r->last] = i;
    r->last = i;
    r->nparts++;
    r->size += size;
    r->next_seq += (uint32_t)size;
    if (p[l4 + 13] & PSH)
        r->push = r->closed = 1;
    else if (size < r->mss)
        r->closed = 1;
    return 1;
}

static Py_ssize_t run_of(Coalescing *c, PyObject *key)
{
    PyObject *found = PyDict_GetItemWithError(c->index, key);
    if (found == NULL)
        return PyErr_Occurred() ? -2 : -1;
    return PyLong_AsSsize_t(found);
}

/* offload.py Coalescer.add */
static int add(Coalescing *c, Py_ssize_t i)
{
    Py_ssize_t n;
    const unsigned char *p = pkt(c, i, &n);
    if (PyDict_GET_SIZE(c->index) && n) {
        PyObject *key = NULL;
        if (p[0] == 0x45)
            key = PyBytes_FromStringAndSize((const char *)p + 12, n < 12 ? 0 : n < 24 ? n - 12 : 12);
        else if (p[0] >> 4 == 6)
            key = PyBytes_FromStringAndSize((const char *)p + 8, n < 8 ? 0 : n < 44 ? n - 8 : 36);
        if (key != NULL) {
            Py_ssize_t r = run_of(c, key);
            Py_DECREF(key);
            if (r == -2)
                return -1;
            if (r >= 0 && try_join(c, &c->runs[r], i, p, n))
                return 0;
        }
        else if (PyErr_Occurred()) {
            return -1;
        }
    }
    int l4, hl;
    uint64_t payload_sum;
    if (!mergeable(p, n, &l4, &hl, &payload_sum)) {
        if (PyDict_GET_SIZE(c->index)) {
            PyObject *key = flow_key(p, n);
            if (key == NULL)
                return -1;
            Py_ssize_t r = run_of(c, key);
            if (r >= 0 && PyDict_DelItem(c->index, key) < 0)
                r = -2;
            Py_DECREF(key);
            if (r == -2 || (r >= 0 && emit(c, run_frame(c, &c->runs[r])) < 0))
                return -1;
        }
        return emit(c, plain_frame(p, n));
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)p + (l4 == 20 ? 12 : 8),
                                              l4 == 20 ? 12 : 36);
    if (key == NULL)
        return -1;
    Py_ssize_t r = run_of(c, key);
    if (r == -2 || (r >= 0 && emit(c, run_frame(c, &c->runs[r])) < 0)) {
        Py_DECREF(key);
        return -1;
    }
    Run *run = &c->runs[c->nruns];
    PyObject *number = PyLong_FromSsize_t(c->nruns);
    int failed = number == NULL || PyDict_SetItem(c->index, key, number) < 0;
    Py_XDECREF(number);
    Py_DECREF(key);
    if (failed)
        return -1;
    c->nruns++;
    run->first = run->last = i;
    run->l4 = l4;
    run->header_len = hl;
    run->nparts = 1;
    run->mss = n - hl;
    run->size = n;
    run->next_seq = get32(p + l4 + 4) + (uint32_t)run->mss;
    run->push = (p[l4 + 13] & PSH) != 0;
    run->closed = run->push || (run->mss & 1);
    run->payload_sum = payload_sum;
    run->next_id = l4 == 20 ? (get16(p + 4) + 1) & 0xFFFF : 0;
    return 0;
}

static PyObject *coalesce(PyObject *self, PyObject *packets)
{
    (void)self;
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "coalesce() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(packets);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(packets, i))) {
            PyErr_SetString(PyExc_TypeError, "coalesce() takes a list of bytes");
            return NULL;
        }
    }
    Coalescing c = {.packets = packets, .nruns = 0};
    c.next = PyMem_Malloc(sizeof(Py_ssize_t) * (count ? count : 1));
    c.runs = PyMem_Malloc(sizeof(Run) * (count ? count : 1));
    c.index = PyDict_New();
    c.out = PyList_New(0);
    PyObject *result = NULL;
    if (c.next == NULL || c.runs == NULL || c.index == NULL || c.out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* The list must not change under us: hold our own reference to each packet. */
    Py_INCREF(packets);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (add(&c, i) < 0) {
            Py_DECREF(packets);
            goto done;
        }
    }
    Py_ssize_t pos = 0;
    PyObject *key, *number;
    while (PyDict_Next(c.index, &pos, &key, &number)) {
        if (emit(&c, run_frame(&c, &c.runs[PyLong_AsSsize_t(number)])) < 0) {
            Py_DECREF(packets);
            goto done;
        }
    }
    Py_DECREF(packets);
    result = Py_NewRef(c.out);
done:
    PyMem_Free(c.next);
    PyMem_Free(c.runs);
    Py_XDECREF(c.index);
    Py_XDECREF(c.out);
    return result;
}


/* -- UDP receive: the datagrams of one recvmmsg call ------------------------------- */

#define SOL_UDP_LEVEL 17
#define UDP_GRO_TYPE 104

static int append_bytes(PyObject *out, const unsigned char *p, Py_ssize_t n)
{
    PyObject *item = PyBytes_FromStringAndSize((const char *)p, n);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(out, item);
    Py_DECREF(item);
    return failed;
}

/* split_mmsg(msgs, data, control, count, slot, cmsg_space) -> (datagrams, truncated):
 * msgs is the struct mmsghdr array the kernel filled (each controllen is set back to
 * cmsg_space for the next call), message i's data at data[i * slot], its control
 * message at control[i * cmsg_space]. */
static PyObject *split_mmsg(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer msgs, data, control;
    Py_ssize_t count, slot, cmsg_space;
    if (!PyArg_ParseTuple(args, "w*y*y*nnn", &msgs, &data, &control, &count, &slot, &cmsg_space))
        return NULL;
    PyObject *out = NULL, *result = NULL;
    if (count < 0 || slot <= 0 || cmsg_space < (Py_ssize_t)CMSG_SPACE(sizeof(int)) ||
        (size_t)msgs.len < (size_t)count * sizeof(struct mmsghdr) || data.len < count * slot ||
        control.len < count * cmsg_space) {
        PyErr_SetString(PyExc_ValueError, "split_mmsg: buffers smaller than count slots");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    long truncated = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        struct mmsghdr m;
        unsigned char *at = (unsigned char *)msgs.buf + i * sizeof(struct mmsghdr);
        memcpy(&m, at, sizeof m);
        Py_ssize_t size = m.msg_len;
        size_t used = m.msg_hdr.msg_controllen;
        size_t room = (size_t)cmsg_space;
        memcpy(at + offsetof(struct mmsghdr, msg_hdr) + offsetof(struct msghdr, msg_controllen),
               &room, sizeof room); /* room for the next call */
        if (m.msg_hdr.msg_flags & MSG_TRUNC) {
            truncated++;
            continue;
        }
        if (size > slot)
            size = slot;
        const unsigned char *start = (const unsigned char *)data.buf + i * slot;
        Py_ssize_t segment = size;
        if (used >= CMSG_LEN(0) + sizeof(int)) {
            struct cmsghdr c;
            const unsigned char *cm = (const unsigned char *)control.buf + i * cmsg_space;
            memcpy(&c, cm, sizeof c);
            if (c.cmsg_level == SOL_UDP_LEVEL && c.cmsg_type == UDP_GRO_TYPE &&
                c.cmsg_len >= CMSG_LEN(0) + sizeof(int)) {
                int gro;
                memcpy(&gro, cm + CMSG_LEN(0), sizeof gro);
                segment = gro ? gro : size;
            }
        }
        if (segment >= size) {
            if (append_bytes(out, start, size) < 0)
                goto done;
            continue;
        }
        for (Py_ssize_t pos = 0; segment > 0 && pos < size; pos += segment) {
            if (append_bytes(out, start + pos, size - pos < segment ? size - pos : segment) < 0)
                goto done;
        }
    }
    result = Py_BuildValue("Ol", out, truncated);
done:
    Py_XDECREF(out);
    PyBuffer_Release(&msgs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&control);
    return result;
}

/* -- DTLS AES-GCM records (RFC 5288, RFC 6347) -------------------------------------- */

#define RECORD_HEADER 13
#define EXPLICIT_NONCE 8
#define TAG 16

static EVP_CIPHER *aes128gcm, *aes256gcm;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    unsigned char salt[4];
} GcmObject;

static void put64(unsigned char *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static void gcm_dealloc(GcmObject *self)
{
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *openssl_error(const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "OpenSSL: %s failed", what);
    return NULL;
}

static PyObject *gcm_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"key", "salt", NULL};
    Py_buffer key, salt;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*", names, &key, &salt))
        return NULL;
    GcmObject *self = NULL;
    const EVP_CIPHER *cipher = key.len == 16 ? aes128gcm : key.len == 32 ? aes256gcm : NULL;
    if (cipher == NULL || salt.len != 4) {
        PyErr_SetString(PyExc_ValueError, "AES-GCM needs a 16- or 32-byte key and a 4-byte salt");
        goto done;
    }
    self = (GcmObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto done;
    memcpy(self->salt, salt.buf, 4);
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    if (self->enc == NULL || self->dec == NULL ||
        !EVP_EncryptInit_ex2(self->enc, cipher, key.buf, NULL, NULL) ||
        !EVP_DecryptInit_ex2(self->dec, cipher, key.buf, NULL, NULL)) {
        Py_CLEAR(self);
        openssl_error("AES-GCM key set-up");
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&salt);
    return (PyObject *)self;
}

/* Whole records carrying prefix + each of plaintexts (the prefix is sealed with it, not
 * copied to it), consecutive sequence numbers from first_seq64: header (type, version,
 * epoch and sequence, length), explicit nonce (the sequence number), ciphertext, tag;
 * the AAD is seq64, type, version, plaintext length. */
static PyObject *gcm_seal_records(GcmObject *self, PyObject *args)
{
    unsigned long long first;
    int ctype, version;
    PyObject *plaintexts;
    const unsigned char *prefix = NULL;
    Py_ssize_t prefix_len = 0;
    if (!PyArg_ParseTuple(args, "KiiO!|y#", &first, &ctype, &version, &PyList_Type, &plaintexts,
                          &prefix, &prefix_len))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(plaintexts);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    EVP_CIPHER_CTX *ctx = self->enc;
    unsigned char nonce[12], aad[13];
    memcpy(nonce, self->salt, 4);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(plaintexts, i);
        if (!PyBytes_Check(item)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "plaintexts must be bytes");
            return NULL;
        }
        Py_ssize_t size = prefix_len + PyBytes_GET_SIZE(item);
        if (size > 0xFFFF - EXPLICIT_NONCE - TAG) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "plaintext too long for a record");
            return NULL;
        }
        uint64_t seq64 = first + (uint64_t)i;
        PyObject *record = PyBytes_FromStringAndSize(NULL, RECORD_HEADER + EXPLICIT_NONCE + size + TAG);
        if (record == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, record);
        unsigned char *q = (unsigned char *)PyBytes_AS_STRING(record);
        q[0] = (unsigned char)ctype;
        put16(q + 1, (uint32_t)version);
        put64(q + 3, seq64);
        put16(q + 11, (uint32_t)(size + EXPLICIT_NONCE + TAG));
        put64(q + RECORD_HEADER, seq64);
        memcpy(nonce + 4, q + RECORD_HEADER, 8);
        memcpy(aad, q + 3, 8);
        aad[8] = (unsigned char)ctype;
        put16(aad + 9, (uint32_t)version);
        put16(aad + 11, (uint32_t)size);
        unsigned char *body = q + RECORD_HEADER + EXPLICIT_NONCE;
        int n;
        const unsigned char *plain = (const unsigned char *)PyBytes_AS_STRING(item);
        if (prefix_len) {
            /* prefix and plaintext put together where the ciphertext goes, sealed in
             * place: one update (a short first one costs AES-GCM's fast path more
             * than the copy does) */
            memcpy(body, prefix, prefix_len);
            memcpy(body + prefix_len, plain, size - prefix_len);
            plain = body;
        }
        if (!EVP_EncryptInit_ex2(ctx, NULL, NULL, nonce, NULL) ||
            !EVP_EncryptUpdate(ctx, NULL, &n, aad, sizeof aad) ||
            (size && !EVP_EncryptUpdate(ctx, body, &n, plain, (int)size)) ||
            !EVP_EncryptFinal_ex(ctx, body + size, &n) ||
            !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, body + size)) {
            Py_DECREF(out);
            return openssl_error("AES-GCM seal");
        }
    }
    return out;
}

/* The plaintext of a record body (explicit nonce, ciphertext, tag), or None when it is
 * too short or does not authenticate. */
/* One record body opened into a new bytes object, or NULL with no exception set when
 * it does not authenticate (NULL with an exception: out of memory, OpenSSL failure). */
static PyObject *gcm_open_body(GcmObject *self, uint64_t seq64, int ctype, int version,
                               const unsigned char *b, Py_ssize_t len)
{
    Py_ssize_t size = len - EXPLICIT_NONCE - TAG;
    if (size < 0 || size > 0xFFFF)
        return NULL;
    unsigned char nonce[12], aad[13];
    memcpy(nonce, self->salt, 4);
    memcpy(nonce + 4, b, EXPLICIT_NONCE);
    put64(aad, seq64);
    aad[8] = (unsigned char)ctype;
    put16(aad + 9, (uint32_t)version);
    put16(aad + 11, (uint32_t)size);
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        return NULL;
    EVP_CIPHER_CTX *ctx = self->dec;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(result);
    int n;
    if (!EVP_DecryptInit_ex2(ctx, NULL, NULL, nonce, NULL) ||
        !EVP_DecryptUpdate(ctx, NULL, &n, aad, sizeof aad) ||
        (size && !EVP_DecryptUpdate(ctx, plain, &n, b + EXPLICIT_NONCE, (int)size)) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG,
                             (void *)(b + EXPLICIT_NONCE + size))) {
        Py_DECREF(result);
        openssl_error("AES-GCM open");
        return NULL;
    }
    if (EVP_DecryptFinal_ex(ctx, plain + size, &n) <= 0) {
        Py_DECREF(result); /* authentication failed */
        return NULL;
    }
    return result;
}

/* As gcm_open_body, for open_datagrams with a split byte: a plaintext of two bytes or
 * more that starts with it comes back without it (*matched set), decrypted straight into
 * the bytes object that is returned; any other comes back whole. */
static PyObject *gcm_open_split(GcmObject *self, uint64_t seq64, int ctype, int version,
                                const unsigned char *b, Py_ssize_t len, int split, int *matched)
{
    *matched = 0;
    Py_ssize_t size = len - EXPLICIT_NONCE - TAG;
    if (split < 0 || size < 2)
        return gcm_open_body(self, seq64, ctype, version, b, len);
    if (size > 0xFFFF)
        return NULL;
    unsigned char nonce[12], aad[13], first;
    memcpy(nonce, self->salt, 4);
    memcpy(nonce + 4, b, EXPLICIT_NONCE);
    put64(aad, seq64);
    aad[8] = (unsigned char)ctype;
    put16(aad + 9, (uint32_t)version);
    put16(aad + 11, (uint32_t)size);
    EVP_CIPHER_CTX *ctx = self->dec;
    const unsigned char *cipher = b + EXPLICIT_NONCE;
    /* The first block apart (a whole one: a shorter first update costs AES-GCM's fast
     * path more than copying 15 bytes does), the rest straight into the result. */
    unsigned char head[16];
    Py_ssize_t head_len = size < 16 ? size : 16;
    int n;
    if (!EVP_DecryptInit_ex2(ctx, NULL, NULL, nonce, NULL) ||
        !EVP_DecryptUpdate(ctx, NULL, &n, aad, sizeof aad) ||
        !EVP_DecryptUpdate(ctx, head, &n, cipher, (int)head_len))
        return openssl_error("AES-GCM open");
    first = head[0];
    int keep = first != split; /* not the split byte: the whole plaintext */
    PyObject *result = PyBytes_FromStringAndSize(NULL, size - 1 + keep);
    if (result == NULL)
        return NULL;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(result);
    memcpy(plain, head + 1 - keep, head_len - 1 + keep);
    unsigned char *rest = plain + head_len - 1 + keep;
    if ((size > head_len &&
         !EVP_DecryptUpdate(ctx, rest, &n, cipher + head_len, (int)(size - head_len))) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(cipher + size))) {
        Py_DECREF(result);
        return openssl_error("AES-GCM open");
    }
    if (EVP_DecryptFinal_ex(ctx, plain + size - 1 + keep, &n) <= 0) {
        Py_DECREF(result); /* authentication failed */
        return NULL;
    }
    *matched = !keep;
    return result;
}

#define APPLICATION_DATA 23
#define MAX_RECORD_BODY (16384 + 2048)

/* RecordProtection.open_datagrams_untrusted (worker/proto/dtls_crypto.py) with the
 * replay window as (top, bits): from datagrams[start] on, each datagram that is exactly
 * one application-data record of epoch is checked against the window, opened, and its
 * plaintext appended to out; stops at the first other datagram. With a split byte
 * (0-255) and the list others: a plaintext of two bytes or more that starts with it goes
 * to out without it, any other to others. Returns (stop index, top, bits, accepted,
 * replays, bad). */
static PyObject *gcm_open_datagrams(GcmObject *self, PyObject *args)
{
    PyObject *datagrams, *out, *others = NULL;
    Py_ssize_t start;
    int epoch, split = -1;
    long long top;
    unsigned long long bits;
    if (!PyArg_ParseTuple(args, "O!niLKO!|iO", &PyList_Type, &datagrams, &start, &epoch, &top,
                          &bits, &PyList_Type, &out, &split, &others))
        return NULL;
    if (split > 255 || (split >= 0 && (others == NULL || !PyList_Check(others))))
        return refuse("a split byte needs the list others");
    Py_ssize_t end = PyList_GET_SIZE(datagrams), i = start < 0 ? 0 : start;
    long accepted = 0, replays = 0, bad = 0;
    for (; i < end; i++) {
        PyObject *item = PyList_GET_ITEM(datagrams, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
            return NULL;
        }
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(item);
        Py_ssize_t body_size = PyBytes_GET_SIZE(item) - RECORD_HEADER;
        if (body_size <= 0)
            break;
        int ctype = d[0], version = get16(d + 1), rec_epoch = get16(d + 3);
        Py_ssize_t length = get16(d + 11);
        if (ctype != APPLICATION_DATA || rec_epoch != epoch || length != body_size ||
            length > MAX_RECORD_BODY)
            break;
        long long seq = (long long)get16(d + 5) << 32 | get32(d + 7);
        if (seq <= top) { /* ReplayWindow.is_fresh, 64 wide */
            long long offset = top - seq;
            if (offset >= 64 || (bits >> offset) & 1) {
                replays++;
                continue;
            }
        }
        int matched;
        PyObject *plaintext = gcm_open_split(self, (uint64_t)epoch << 48 | (uint64_t)seq, ctype,
                                             version, d + RECORD_HEADER, body_size, split, &matched);
        if (plaintext == NULL) {
            if (PyErr_Occurred())
                return NULL;
            bad++;
            continue;
        }
        if (seq > top) { /* ReplayWindow.accept */
            long long shift = seq - top;
            bits = shift >= 64 ? 1 : bits << shift | 1;
            top = seq;
        }
        else {
            bits |= 1ULL << (top - seq);
        }
        accepted++;
        int failed = PyList_Append(split < 0 || matched ? out : others, plaintext);
        Py_DECREF(plaintext);
        if (failed)
            return NULL;
    }
    return Py_BuildValue("nLKlll", i, top, bits, accepted, replays, bad);
}

/* The plaintext of a record body (explicit nonce, ciphertext, tag), or None when it is
 * too short or does not authenticate. */
static PyObject *gcm_open(GcmObject *self, PyObject *args)
{
    unsigned long long seq64;
    int ctype, version;
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "Kiiy*", &seq64, &ctype, &version, &body))
        return NULL;
    PyObject *result = gcm_open_body(self, seq64, ctype, version, body.buf, body.len);
    PyBuffer_Release(&body);
    if (result == NULL && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    return result;
}

static PyMethodDef gcm_methods[] = {
    {"open_datagrams", (PyCFunction)gcm_open_datagrams, METH_VARARGS,
     "open_datagrams(datagrams, start, epoch, top, bits, out, split=-1, others=None) -> (stop, "
     "top, bits, accepted, replays, bad)"},
    {"seal_records", (PyCFunction)gcm_seal_records, METH_VARARGS,
     "seal_records(first_seq64, ctype, version, plaintexts, prefix=b'') -> list[bytes]: whole "
     "records"},
    {"open", (PyCFunction)gcm_open, METH_VARARGS,
     "open(seq64, ctype, version, body) -> bytes | None: None if it does not authenticate"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GcmType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sepconnect.worker._accel.Gcm",
    .tp_basicsize = sizeof(GcmObject),
    .tp_dealloc = (destructor)gcm_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Gcm(key, salt): DTLS AES-GCM record protection of one epoch and direction",
    .tp_methods = gcm_methods,
    .tp_new = gcm_new,
};

/* TLS records in bursts, on pyOpenSSL's own connection. ocserv takes one CSTP packet
 * per TLS record and sends one per record, and pyOpenSSL's send/recv cost ~2 µs of
 * Python per record around SSL_write/SSL_read. This loops over a burst in C, calling
 * the same functions of the same OpenSSL on the same SSL object (worker/accel.py finds
 * their addresses through cffi; cryptography's OpenSSL is linked into its extension,
 * not ours). Memory BIOs on both sides: no system call. */
typedef int (*ssl_io_fn)(void *ssl, void *buf, int num);
typedef int (*ssl_get_error_fn)(const void *ssl, int ret);

#define SSL_ERROR_NONE 0
#define TLS_DRAIN_STEP (16384 + 2048) /* one record's ciphertext, at most */

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the pyOpenSSL Connection that owns ssl and the BIO */
    void *ssl, *from_bio;
    ssl_io_fn ssl_read, ssl_write, bio_read;
    ssl_get_error_fn get_error;
    unsigned char *scratch; /* plaintext read */
    Py_ssize_t scratch_size;
    unsigned char *sealed; /* ciphertext written, before it is appended at once */
    Py_ssize_t sealed_size;
} TlsRecordsObject;

static void tls_dealloc(TlsRecordsObject *self)
{
    Py_XDECREF(self->owner);
    PyMem_Free(self->scratch);
    PyMem_Free(self->sealed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *tls_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"owner",     "ssl",           "from_bio", "ssl_read",
                            "ssl_write", "ssl_get_error", "bio_read", NULL};
    PyObject *owner;
    unsigned long long ssl, bio, rd, wr, err, bio_rd;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OKKKKKK", names, &owner, &ssl, &bio, &rd,
                                     &wr, &err, &bio_rd))
        return NULL;
    if (!ssl || !bio || !rd || !wr || !err || !bio_rd)
        return refuse("TlsRecords needs every address");
    TlsRecordsObject *self = (TlsRecordsObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->owner = Py_NewRef(owner);
    self->ssl = (void *)(uintptr_t)ssl;
    self->from_bio = (void *)(uintptr_t)bio;
    self->ssl_read = (ssl_io_fn)(uintptr_t)rd;
    self->ssl_write = (ssl_io_fn)(uintptr_t)wr;
    self->get_error = (ssl_get_error_fn)(uintptr_t)err;
    self->bio_read = (ssl_io_fn)(uintptr_t)bio_rd;
    return (PyObject *)self;
}

/* Move what OpenSSL wrote to its outgoing memory BIO to self->sealed from *used on;
 * -1 with an exception set when out of memory. */
static int tls_drain(TlsRecordsObject *self, Py_ssize_t *used)
{
    for (;;) {
        if (self->sealed_size - *used < TLS_DRAIN_STEP) {
            Py_ssize_t size = 2 * self->sealed_size + TLS_DRAIN_STEP;
            unsigned char *bigger = PyMem_Realloc(self->sealed, size);
            if (bigger == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            self->sealed = bigger;
            self->sealed_size = size;
        }
        int n = self->bio_read(self->from_bio, self->sealed + *used, TLS_DRAIN_STEP);
        if (n <= 0)
            return 0;
        *used += n;
    }
}

/* TlsStream.send_records_nowait's loop: each record one SSL_write, the ciphertext
 * appended to out, until out holds limit bytes or OpenSSL refuses one. Returns (taken,
 * SSL_get_error of the refusal or 0). */
static PyObject *tls_write_records(TlsRecordsObject *self, PyObject *args)
{
    PyObject *records, *out;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyList_Type, &records, &PyByteArray_Type, &out, &limit))
        return NULL;
    Py_ssize_t taken = 0, count = PyList_GET_SIZE(records), used = 0;
    Py_ssize_t queued = PyByteArray_GET_SIZE(out);
    int error = SSL_ERROR_NONE;
    for (; taken < count && queued + used < limit; taken++) {
        PyObject *record = PyList_GET_ITEM(records, taken);
        if (!PyBytes_Check(record)) {
            PyErr_SetString(PyExc_TypeError, "records must be bytes");
            return NULL;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(record);
        if (size == 0 || size > INT_MAX)
            return refuse("a record must have 1 to INT_MAX bytes");
        int n = self->ssl_write(self->ssl, PyBytes_AS_STRING(record), (int)size);
        if (n <= 0) {
            error = self->get_error(self->ssl, n);
            break;
        }
        if (tls_drain(self, &used) < 0)
            return NULL;
    }
    /* one append: growing out record by record moved it again and again */
    if (used) {
        if (PyByteArray_Resize(out, queued + used) < 0)
            return NULL;
        memcpy(PyByteArray_AS_STRING(out) + queued, self->sealed, used);
    }
    return Py_BuildValue("ni", taken, error);
}

/* TlsStream.recv_nowait's SSL_read, repeated: the plaintext of every record OpenSSL can
 * open from what it holds, up to limit bytes. Returns (plaintext, SSL_get_error of the
 * read that stopped it, or 0 when limit was reached). */
static PyObject *tls_read(TlsRecordsObject *self, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit <= 0 || limit > INT_MAX)
        return refuse("read limit out of range");
    if (self->scratch_size < limit) {
        unsigned char *bigger = PyMem_Realloc(self->scratch, limit);
        if (bigger == NULL)
            return PyErr_NoMemory();
        self->scratch = bigger;
        self->scratch_size = limit;
    }
    Py_ssize_t size = 0;
    int error = SSL_ERROR_NONE;
    while (size < limit) {
        int n = self->ssl_read(self->ssl, self->scratch + size, (int)(limit - size));
        if (n <= 0) {
            error = self->get_error(self->ssl, n);
            break;
        }
        size += n;
    }
    return Py_BuildValue("y#i", (const char *)self->scratch, size, error);
}

static PyMethodDef tls_methods[] = {
    {"write_records", (PyCFunction)tls_write_records, METH_VARARGS,
     "write_records(records, out, limit) -> (taken, ssl_error)"},
    {"read", (PyCFunction)tls_read, METH_O, "read(limit) -> (plaintext, ssl_error)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TlsRecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sepconnect.worker._accel.TlsRecords",
    .tp_basicsize = sizeof(TlsRecordsObject),
    .tp_dealloc = (destructor)tls_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TlsRecords(owner, ssl, from_bio, ssl_read, ssl_write, ssl_get_error, "
              "bio_read): bursts of TLS records on an OpenSSL connection with memory BIOs",
    .tp_methods = tls_methods,
    .tp_new = tls_new,
};

#define CSTP_HEADER 8
#define CSTP_MAX_PAYLOAD 16384

/* CstpDecoder.feed_pairs_untrusted's loop (worker/proto/cstp.py) over a run of DATA
 * frames: from buf[start] on, each complete frame with a valid header (magic, length
 * at most CSTP_MAX_PAYLOAD, type DATA, zero byte 7) becomes (data_type, payload).
 * Stops at anything else (another type, a bad header, a frame not all there) for the
 * Python loop, which says what it is. Returns (pairs, offset reached). */
static PyObject *cstp_data_pairs(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start;
    PyObject *data_type;
    if (!PyArg_ParseTuple(args, "y*nO", &view, &start, &data_type))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len, off = start < 0 ? 0 : start;
    PyObject *pairs = PyList_New(0);
    if (pairs == NULL)
        goto failed;
    while (end - off >= CSTP_HEADER) {
        const unsigned char *h = buf + off;
        Py_ssize_t length = get16(h + 4);
        if (memcmp(h, "STF\x01", 4) != 0 || length > CSTP_MAX_PAYLOAD || h[6] != 0 || h[7] != 0 ||
            end - off - CSTP_HEADER < length)
            break;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)h + CSTP_HEADER, length);
        if (payload == NULL)
            goto failed;
        PyObject *pair = PyTuple_Pack(2, data_type, payload);
        Py_DECREF(payload);
        if (pair == NULL || PyList_Append(pairs, pair) < 0) {
            Py_XDECREF(pair);
            goto failed;
        }
        Py_DECREF(pair);
        off += CSTP_HEADER + length;
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("Nn", pairs, off);
    return result;
failed:
    Py_XDECREF(pairs);
    PyBuffer_Release(&view);
    return NULL;
}

/* cstp.encode_data for each of packets (worker/proto/cstp.py encode_data_frames): the
 * header (magic, payload length, type DATA, 0) and the packet, one bytes each. Every
 * size is checked before any frame is built. */
static PyObject *cstp_data_frames(PyObject *self, PyObject *packets)
{
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(packets);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *packet = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(packet)) {
            PyErr_SetString(PyExc_TypeError, "packets must be bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(packet) > CSTP_MAX_PAYLOAD)
            return PyErr_Format(PyExc_ValueError, "CSTP payload of %zd bytes exceeds %d",
                                PyBytes_GET_SIZE(packet), CSTP_MAX_PAYLOAD);
    }
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *packet = PyList_GET_ITEM(packets, i);
        Py_ssize_t size = PyBytes_GET_SIZE(packet);
        PyObject *frame = PyBytes_FromStringAndSize(NULL, CSTP_HEADER + size);
        if (frame == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        unsigned char *q = (unsigned char *)PyBytes_AS_STRING(frame);
        memcpy(q, "STF\x01", 4);
        put16(q + 4, (uint32_t)size);
        q[6] = q[7] = 0;
        memcpy(q + CSTP_HEADER, PyBytes_AS_STRING(packet), size);
        PyList_SET_ITEM(out, i, frame);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"cstp_data_pairs", cstp_data_pairs, METH_VARARGS,
     "cstp_data_pairs(buf, start, data_type) -> (pairs, offset): a run of DATA frames"},
    {"cstp_data_frames", cstp_data_frames, METH_O,
     "cstp_data_frames(packets) -> list[bytes]: each packet as a CSTP DATA frame"},
    {"coalesce", coalesce, METH_O,
     "coalesce(packets) -> list[bytes]: a burst from the server as tun frames"},
    {"split_mmsg", split_mmsg, METH_VARARGS,
     "split_mmsg(msgs, data, control, count, slot, cmsg_space) -> (datagrams, truncated)"},
    {"split_frame", split_frame, METH_O,
     "split_frame(frame) -> list[bytes]: a TSO/partial-checksum tun frame as packets"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_accel",
    .m_doc = "The worker's compiled data-path accelerator (worker/accel.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__accel(void)
{
    /* OpenSSL's one-time work now, before the sandbox: no configuration file (nothing
     * here needs one), the two ciphers fetched once and kept. */
    if (aes128gcm == NULL) {
        if (!OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL))
            return openssl_error("library set-up");
        aes128gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
        aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
        if (aes128gcm == NULL || aes256gcm == NULL)
            return openssl_error("fetching AES-GCM");
    }
    if (PyType_Ready(&GcmType) < 0 || PyType_Ready(&TlsRecordsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Gcm", (PyObject *)&GcmType) < 0 ||
        PyModule_AddObjectRef(m, "TlsRecords", (PyObject *)&TlsRecordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
