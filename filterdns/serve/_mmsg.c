/* filterdns.serve._mmsg: batched UDP receive and send (Linux recvmmsg(2) / sendmmsg(2)).
 *
 * Two functions, no state visible to Python:
 *
 *   recv_batch(fd, n) -> [(data: bytes, addr: tuple), ...]
 *       Up to n (1..64) datagrams waiting on the non-blocking socket fd, in one system call.
 *       [] when none is waiting (EAGAIN). addr is what socket.recvfrom gives: (host, port)
 *       for AF_INET, (host, port, flowinfo, scope_id) for AF_INET6. A datagram longer than
 *       65535 octets cannot exist over UDP; each slot holds 65535.
 *
 *   send_batch(fd, replies, start=0) -> (sent, errno)
 *       Sends replies[start:] (a list of (data, addr)) with as few sendmmsg calls as it takes.
 *       Stops at EAGAIN/ENOBUFS (the socket buffer is full: the caller keeps the rest) and
 *       returns how many of replies[start:] were taken, with that errno (0 when all went out).
 *       A reply the kernel refuses for another reason (EINVAL, EACCES, ...) is skipped and
 *       counted as taken, like a failed sendto that a UDP server ignores.
 *
 *   serve(fd, n, respond) -> (received, unsent)
 *       One round of a UDP server: recv_batch(fd, n), then respond(data, addr) for each
 *       datagram in order (a reply is bytes, or None for no reply), then every reply sent as
 *       send_batch would, each to the very address its query came from (the received sockaddr,
 *       not parsed back from addr). received is how many datagrams came in (0: none waiting);
 *       unsent is None, or the (data, addr) replies the kernel could not take yet (EAGAIN,
 *       ENOBUFS) for the caller to send later. When respond raises, the replies made before it
 *       are sent, the remaining datagrams are dropped and the exception propagates.
 *       Per datagram this saves what the same loop costs in Python: a tuple and a list slot
 *       per reply, and parsing the address text back into a sockaddr (inet_pton).
 *
 * Both hold the GIL throughout: the socket is non-blocking, so no call waits. The receive
 * buffers are static (the GIL serialises callers); they are touched only as deep as packets
 * reach, so a process pays one or two pages per slot, not 64 x 64 KiB.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64
#define SLOT 65535

static char *bufs;  /* MAX_BATCH * SLOT, allocated on first use */
static struct mmsghdr rmsgs[MAX_BATCH];
static struct iovec riov[MAX_BATCH];
static struct sockaddr_storage raddr[MAX_BATCH];

/* dotted-quad text of a (network order) IPv4 address; returns its length (inet_ntop uses
 * sprintf, a large part of the cost of an address tuple) */
/* One outgoing message: the buffer of ``view`` to ``addr``. */
static void
set_msg(struct mmsghdr *m, struct iovec *iov, const Py_buffer *view, void *addr, socklen_t alen)
{
    iov->iov_base = view->buf;
    iov->iov_len = (size_t)view->len;
    memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_name = addr;
    m->msg_hdr.msg_namelen = alen;
}

static int
ipv4_text(const unsigned char *b, char *out)
{
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned int v = b[i];
        if (v >= 100) {
            *p++ = (char)('0' + v / 100);
            v %= 100;
            *p++ = (char)('0' + v / 10);
        } else if (v >= 10) {
            *p++ = (char)('0' + v / 10);
        }
        *p++ = (char)('0' + v % 10);
        if (i < 3)
            *p++ = '.';
    }
    return (int)(p - out);
}

static PyObject *
addr_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        int len = ipv4_text((const unsigned char *)&a->sin_addr, host);
        PyObject *h = PyUnicode_DecodeASCII(host, len, NULL);
        PyObject *port = h ? PyLong_FromLong((long)ntohs(a->sin_port)) : NULL;
        PyObject *t = port ? PyTuple_New(2) : NULL;
        if (t == NULL) {
            Py_XDECREF(h);
            Py_XDECREF(port);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, h);
        PyTuple_SET_ITEM(t, 1, port);
        return t;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo), (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* recvmmsg of up to n datagrams into the static buffers: how many (0 on EAGAIN), or -1 with
 * OSError set */
static int
recv_into(int fd, int n)
{
    if (bufs == NULL) {
        bufs = PyMem_RawMalloc((size_t)MAX_BATCH * SLOT);
        if (bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        riov[i].iov_base = bufs + (size_t)i * SLOT;
        riov[i].iov_len = SLOT;
        memset(&rmsgs[i].msg_hdr, 0, sizeof rmsgs[i].msg_hdr);
        rmsgs[i].msg_hdr.msg_iov = &riov[i];
        rmsgs[i].msg_hdr.msg_iovlen = 1;
        rmsgs[i].msg_hdr.msg_name = &raddr[i];
        rmsgs[i].msg_hdr.msg_namelen = sizeof raddr[i];
    }
    int got;
    do {
        got = recvmmsg(fd, rmsgs, (unsigned int)n, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return got;
}

static int
check_n(int n)
{
    if (n < 1 || n > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "n must be in 1..%d", MAX_BATCH);
        return -1;
    }
    return 0;
}

static PyObject *
recv_batch(PyObject *self, PyObject *args)
{
    int fd, n;
    if (!PyArg_ParseTuple(args, "ii", &fd, &n) || check_n(n) < 0)
        return NULL;
    int got = recv_into(fd, n);
    if (got < 0)
        return NULL;
    PyObject *out = PyList_New(got);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        PyObject *data = PyBytes_FromStringAndSize(riov[i].iov_base, (Py_ssize_t)rmsgs[i].msg_len);
        PyObject *addr = data ? addr_tuple(&raddr[i]) : NULL;
        PyObject *item = addr ? PyTuple_Pack(2, data, addr) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* addr tuple -> sockaddr; 0 ok, -1 with a Python exception set */
static int
parse_addr(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    unsigned int flow = 0, scope = 0;
    if (!PyTuple_Check(addr) || !PyArg_ParseTuple(addr, "si|II", &host, &port, &flow, &scope)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "address must be a (host, port[, flowinfo, scope_id]) tuple");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        *len = sizeof *a4;
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        a6->sin6_flowinfo = htonl(flow);
        a6->sin6_scope_id = scope;
        *len = sizeof *a6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

/* sendmmsg of msgs[0..k): how many were taken before EAGAIN/ENOBUFS (then *err is set); a
 * reply refused for another reason is skipped and counted as taken */
static int
send_msgs(int fd, struct mmsghdr *msgs, int k, int *err)
{
    int done = 0;
    *err = 0;
    while (done < k) {
        int r = sendmmsg(fd, msgs + done, (unsigned int)(k - done), MSG_DONTWAIT);
        if (r > 0) {
            done += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            *err = errno;
            break;
        } else {
            done += 1;  /* this reply cannot be sent (EINVAL, EACCES, ...): skip it */
        }
    }
    return done;
}

static PyObject *
send_batch(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *replies;
    Py_ssize_t start = 0;
    if (!PyArg_ParseTuple(args, "iO!|n", &fd, &PyList_Type, &replies, &start))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(replies);
    if (start < 0 || start > total) {
        PyErr_SetString(PyExc_IndexError, "start out of range");
        return NULL;
    }
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage addrs[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    Py_ssize_t pos = start;
    int err = 0;
    while (pos < total && !err) {
        int k = 0;
        for (; k < MAX_BATCH && pos + k < total; k++) {
            PyObject *item = PyList_GET_ITEM(replies, pos + k);
            socklen_t alen;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "each reply must be a (data, addr) tuple");
                goto fail;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[k], PyBUF_SIMPLE) < 0)
                goto fail;
            if (parse_addr(PyTuple_GET_ITEM(item, 1), &addrs[k], &alen) < 0) {
                PyBuffer_Release(&views[k]);
                goto fail;
            }
            set_msg(&msgs[k], &iov[k], &views[k], &addrs[k], alen);
            continue;
        fail:
            for (int j = 0; j < k; j++)
                PyBuffer_Release(&views[j]);
            return NULL;
        }
        int done = send_msgs(fd, msgs, k, &err);
        for (int j = 0; j < k; j++)
            PyBuffer_Release(&views[j]);
        pos += done;
    }
    return Py_BuildValue("(ni)", pos - start, err);
}

/* ------------------------------------------------------------------------------------------
 * Replay: answers the Python path has marked as fixed, replayed for queries that can only get
 * the same answer.
 *
 * The responder decides every answer (one policy path). When it answers a UDP query whose
 * answer is fixed for everything the query's key names (a static answer, or a chain outcome
 * that holds for the whole geo database network of the client until the region state or the
 * config changes), it arms the Replay with the metrics cell of that answer, and serve() keeps
 * (key -> the reply it returned). A later query with the same key gets that reply with its own
 * ID and ECS address, without entering Python.
 *
 * The key is everything the answer can depend on:
 *   - the query from the flags on, octet for octet (the question as sent, its case included,
 *     and the OPT record with its size, DO bit and ECS family, source and scope), except the
 *     ID and the ECS address bits;
 *   - for the packet's source address and, with ECS source > 0, the ECS address: the database
 *     network holding it (the search-tree leaf: its depth and the address masked to it), read
 *     from the geo database's tree as the Python reader reads it; the exact address where the
 *     tree cannot say (no database, an IPv6 address in an IPv4 database, IPv4-mapped ECS).
 * Only a narrow, well-formed shape is keyed (one question with no compression, no answer or
 * authority records, at most an OPT record that ends the packet with no option or one ECS
 * option, its address exactly as long as the source prefix needs and zero past it); anything
 * else goes to Python as before.
 *
 * Two generations of at most `cap` entries each, open addressing: a hit in the older one is
 * copied to the newer; when the newer is full the older is dropped (bounded, never cleared
 * wholesale under load). reset() empties both: the Python side calls it when the config or the
 * region state is no longer the one the entries were made under, before any query of a batch.
 *
 * Pools: an answer drawn at random (shuffle, shed_load between its watermarks) from a
 * distribution that is itself fixed for the key is armed as pooled (arm(cell, True)). Its
 * entry keeps up to `pool` replies, each one Python's own independent draw. One query in
 * `refresh` (chosen at random) goes to Python, whose new draw fills the next slot while the
 * pool grows, then replaces one chosen at random; every other query gets the reply of a filled
 * slot chosen at random. Every slot always holds an independent draw of Python's distribution
 * and the slot is chosen independently of what it holds, so each replayed answer has exactly
 * the probabilities Python's own draw has; consecutive answers of one key are correlated over
 * a few queries (about `refresh` while the pool grows, up to pool * refresh once it is full),
 * as a resolver's cache of one answer is. pool=0 turns pools off (the Python side does under
 * --seed, so a seeded run gives the same answers in the same order with or without the Replay).
 *
 * Bounds: each generation holds at most `cap` entries and max_bytes / 2 octets of keys and
 * replies (counted as they are made); the first bound reached rotates it.
 * ------------------------------------------------------------------------------------------ */
#include <stdint.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define KEY_QMAX 512           /* longest query keyed */
#define KEY_MAX (KEY_QMAX + 2 * 20)
#define POOL_MAX 32            /* most draws kept per pooled key */
#define REPLY_MAX 4096         /* longest reply kept */
#define ARENA 32768            /* octets of replayed replies per serve() call */
#define NB_MAX 24

typedef struct {
    uint64_t hash;
    PyObject *key;     /* bytes */
    PyObject *resp;    /* bytes */
    PyObject *cell;    /* array('Q'): one count per latency bucket, then the nanoseconds */
    uint64_t *counts;
    uint16_t alen;     /* ECS address octets at the end of resp, copied from each query */
    struct rpool *pool; /* a pooled key's draws (resp, cell, counts unused), or NULL */
} rentry;

/* a pooled key's draws: n filled of the Replay's `pool` slots */
typedef struct rpool {
    int n;
    struct {
        PyObject *resp, *cell;
        uint64_t *counts;
        uint16_t alen;
    } v[];
} rpool;

typedef struct {
    rentry *slot;
    uint32_t mask;
    uint32_t used;
    size_t bytes;      /* octets of keys and replies its entries made (the budget's count) */
} rtable;

static void
rpool_free(rpool *p)
{
    if (p == NULL)
        return;
    for (int j = 0; j < p->n; j++) {
        Py_XDECREF(p->v[j].resp);
        Py_XDECREF(p->v[j].cell);
    }
    PyMem_Free(p);
}

typedef struct {
    PyObject_HEAD
    rtable gen[2];            /* gen[0] takes new entries; gen[1] is the older */
    uint32_t cap;
    int nb;                   /* latency buckets (bounds + 1) */
    uint64_t bounds[NB_MAX];  /* bucket upper bounds, ns */
    PyObject *tree;           /* the geo database file (a buffer), or NULL */
    uint32_t node_count, ipv4_start;
    int node_octets, ip_version;
    /* during serve(): the tree's buffer */
    const uint8_t *t;
    Py_ssize_t tlen;
    int armed;
    PyObject *armed_cell;
    unsigned long long hits, misses, inserts, refused, rotations, pool_hits, pool_draws;
    int pool, refresh;        /* replies kept per pooled key (0: pools off); 1 in refresh to Python */
    size_t max_bytes;         /* per generation: keys and replies; a full one rotates */
    uint64_t rs;              /* xorshift64* state: which slot, which query refreshes */
} Replay;

static inline uint64_t
replay_rand(Replay *rp)
{
    uint64_t x = rp->rs;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rp->rs = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t
key_hash(const uint8_t *k, Py_ssize_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, k, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        k += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, k, (size_t)n);
    h = (h ^ v) * 0x94D049BB133111EBULL;
    h ^= h >> 29;
    return h ? h : 1;  /* 0 marks an empty slot */
}

static int
rtable_init(rtable *t, uint32_t cap)
{
    uint32_t slots = 1;
    while (slots < cap * 2)
        slots <<= 1;
    t->slot = PyMem_Calloc(slots, sizeof(rentry));
    if (t->slot == NULL)
        return -1;
    t->mask = slots - 1;
    t->used = 0;
    return 0;
}

static void
rtable_empty(rtable *t)
{
    if (t->slot == NULL || t->used == 0)
        return;
    for (uint32_t i = 0; i <= t->mask; i++) {
        rentry *e = &t->slot[i];
        if (e->hash) {
            Py_CLEAR(e->key);
            Py_CLEAR(e->resp);
            Py_CLEAR(e->cell);
            rpool_free(e->pool);
            e->pool = NULL;
            e->hash = 0;
        }
    }
    t->used = 0;
    t->bytes = 0;
}

static rentry *
rtable_find(rtable *t, uint64_t h, const uint8_t *k, Py_ssize_t n)
{
    uint32_t i = (uint32_t)h & t->mask;
    for (;;) {
        rentry *e = &t->slot[i];
        if (e->hash == 0)
            return NULL;
        if (e->hash == h && PyBytes_GET_SIZE(e->key) == n && memcmp(PyBytes_AS_STRING(e->key), k, (size_t)n) == 0)
            return e;
        i = (i + 1) & t->mask;
    }
}

/* a free slot for hash h in gen[0], rotating the generations when it is full */
static rentry *
rtable_slot(Replay *rp, uint64_t h)
{
    rtable *t = &rp->gen[0];
    if (t->used >= rp->cap || t->bytes >= rp->max_bytes) {
        rtable old = rp->gen[1];
        rtable_empty(&old);
        rp->gen[1] = rp->gen[0];
        rp->gen[0] = old;
        rp->rotations++;
        t = &rp->gen[0];
    }
    uint32_t i = (uint32_t)h & t->mask;
    while (t->slot[i].hash != 0)
        i = (i + 1) & t->mask;
    t->used++;
    return &t->slot[i];
}

/* the octets an entry counts against its generation's budget: key, reply, a pool and its draws */
static size_t
rentry_bytes(const Replay *rp, const rentry *e)
{
    size_t b = (size_t)(PyBytes_GET_SIZE(e->key) + PyBytes_GET_SIZE(e->resp));
    if (e->pool != NULL) {
        b += sizeof(rpool) + (size_t)rp->pool * sizeof(e->pool->v[0]);
        for (int j = 0; j < e->pool->n; j++)
            b += (size_t)PyBytes_GET_SIZE(e->pool->v[j].resp);
    }
    return b;
}

static void
rentry_set(rentry *e, uint64_t h, PyObject *key, PyObject *resp, PyObject *cell, uint64_t *counts, uint16_t alen)
{
    e->hash = h;
    Py_INCREF(key);
    e->key = key;
    Py_INCREF(resp);
    e->resp = resp;
    Py_XINCREF(cell);
    e->cell = cell;
    e->counts = counts;
    e->alen = alen;
    e->pool = NULL;
}

static inline uint32_t
tree_rec(const Replay *rp, uint32_t node, int bit)
{
    const uint8_t *p;
    switch (rp->node_octets) {
    case 6:
        p = rp->t + (size_t)node * 6 + bit * 3;
        return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
    case 7:
        p = rp->t + (size_t)node * 7;
        if (bit == 0)
            return (uint32_t)(p[3] & 0xF0) << 20 | (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        return (uint32_t)(p[3] & 0x0F) << 24 | (uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6];
    default:
        p = rp->t + (size_t)node * 8 + bit * 4;
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    }
}

/* The database network of an address, appended at out: tag, depth, the address masked to the
 * depth (the exact address, depth 255, where the tree cannot say). fam 4 or 6; a is 4 or 16
 * octets. Returns the octets written. */
static int
net_of(const Replay *rp, uint8_t tag, int fam, const uint8_t *a, int exact, uint8_t *out)
{
    int bits = fam == 4 ? 32 : 128;
    uint32_t node = 0;
    if (rp->t == NULL || exact || (fam == 6 && rp->ip_version != 6))
        goto whole;
    if (fam == 4 && rp->ip_version == 6) {
        node = rp->ipv4_start;
        if (node >= rp->node_count)
            goto whole;
    }
    int depth = 0;
    while (depth < bits && node < rp->node_count) {
        int bit = a[depth >> 3] >> (7 - (depth & 7)) & 1;
        node = tree_rec(rp, node, bit);
        depth++;
    }
    if (node < rp->node_count)
        goto whole;
    out[0] = tag;
    out[1] = (uint8_t)depth;
    int whole_octets = depth >> 3, rest = depth & 7;
    memcpy(out + 2, a, (size_t)whole_octets);
    int n = 2 + whole_octets;
    if (rest)
        out[n++] = a[whole_octets] & (uint8_t)(0xFF << (8 - rest));
    return n;
whole:
    out[0] = tag;
    out[1] = 255;
    memcpy(out + 2, a, (size_t)(bits / 8));
    return 2 + bits / 8;
}

static const uint8_t MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

/* The key of query d[0..n) from ss (see above) into key; its length, or 0 when the query is not
 * of the keyed shape. *aoff and *alen: where the ECS address is in d (alen 0: none). */
static Py_ssize_t
make_key(const Replay *rp, const uint8_t *d, Py_ssize_t n, const struct sockaddr_storage *ss,
         uint8_t *key, int *aoff, int *alen)
{
    *alen = 0;
    if (n < 17 || n > KEY_QMAX || (d[2] & 0x80))
        return 0;
    if (d[4] != 0 || d[5] != 1 || d[6] | d[7] | d[8] | d[9] || d[10] != 0 || d[11] > 1)
        return 0;
    Py_ssize_t p = 12;
    for (;;) {
        if (p >= n)
            return 0;
        unsigned l = d[p];
        if (l == 0) {
            p++;
            break;
        }
        if (l > 63)
            return 0;
        p += l + 1;
    }
    p += 4;
    if (p > n)
        return 0;
    Py_ssize_t body = n;  /* the query octets keyed as they are: [2, body) */
    int src = 0, efam = 0;
    if (d[11] == 0) {
        if (p != n)
            return 0;
    } else {
        if (n - p < 11 || d[p] != 0 || d[p + 1] != 0 || d[p + 2] != 41)
            return 0;
        unsigned rdlen = (unsigned)d[p + 9] << 8 | d[p + 10];
        if (p + 11 + (Py_ssize_t)rdlen != n)
            return 0;
        if (rdlen) {
            const uint8_t *o = d + p + 11;
            unsigned olen = (unsigned)o[2] << 8 | o[3];
            if (rdlen < 8 || o[0] != 0 || o[1] != 8 || olen != rdlen - 4 || o[7] != 0)
                return 0;
            unsigned family = (unsigned)o[4] << 8 | o[5];
            src = o[6];
            if (family == 1 && src <= 32)
                efam = 4;
            else if (family == 2 && src <= 128)
                efam = 6;
            else
                return 0;
            int want = (src + 7) / 8;
            if ((int)olen - 4 != want)
                return 0;
            if (want && (src & 7) && (o[8 + want - 1] & (uint8_t)(0xFF >> (src & 7))))
                return 0;
            *aoff = (int)(p + 11 + 8);
            *alen = want;
            body = *aoff;
        }
    }
    Py_ssize_t k = body - 2;
    memcpy(key, d + 2, (size_t)k);
    /* the packet's source */
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        k += net_of(rp, 0x14, 4, (const uint8_t *)&a4->sin_addr, 0, key + k);
    } else if (ss->ss_family == AF_INET6) {
        const uint8_t *a6 = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (memcmp(a6, MAPPED, 12) == 0)  /* the resolver's address read as IPv4, as Python does */
            k += net_of(rp, 0x15, 4, a6 + 12, 0, key + k);
        else
            k += net_of(rp, 0x16, 6, a6, 0, key + k);
    } else {
        return 0;
    }
    /* the ECS address, zero past the source prefix */
    if (src > 0) {
        uint8_t a[16] = {0};
        memcpy(a, d + *aoff, (size_t)*alen);
        int exact = efam == 6 && memcmp(a, MAPPED, 12) == 0;
        k += net_of(rp, efam == 4 ? 0x24 : 0x26, efam, a, exact, key + k);
    }
    return k;
}

static inline uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void
count_hit(const Replay *rp, uint64_t *counts, uint64_t ns)
{
    if (counts == NULL)
        return;
    int b = 0;
    while (b < rp->nb - 1 && rp->bounds[b] < ns)
        b++;
    counts[b] += 1;
    counts[rp->nb] += ns;
}

/* the counts of an array('Q') cell of at least nb + 1 items, or NULL (a Python error set) */
static uint64_t *
cell_counts(const Replay *rp, PyObject *cell)
{
    Py_buffer v;
    if (PyObject_GetBuffer(cell, &v, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    uint64_t *c = v.buf;
    int ok = v.itemsize == 8 && v.format != NULL && (strcmp(v.format, "Q") == 0 || strcmp(v.format, "L") == 0)
             && v.len >= (Py_ssize_t)(8 * (rp->nb + 1));
    PyBuffer_Release(&v);  /* the cell is held by the entry and never resized */
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "a replay cell is an array('Q') of len(bounds) + 2 items");
        return NULL;
    }
    return c;
}

/* keep resp (the reply Python made for query d with key) when it has the replayed shape: the
 * query's ID, and with ECS the option last with the query's family, source and address */
static int reply_fits(Replay *rp, PyObject *resp, const uint8_t *d, int aoff, int alen, uint64_t **counts,
                      PyObject **cell);
static void replay_keep_pool(Replay *rp, uint64_t h, PyObject *key, PyObject *resp, const uint8_t *d, int aoff,
                             int alen, int slot);

static void
replay_keep(Replay *rp, uint64_t h, PyObject *key, PyObject *resp, const uint8_t *d, int aoff, int alen)
{
    uint64_t *counts;
    PyObject *cell;
    if (!reply_fits(rp, resp, d, aoff, alen, &counts, &cell))
        return;
    if (rtable_find(&rp->gen[0], h, (const uint8_t *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) != NULL)
        return;  /* the same query twice in one batch */
    rentry *e = rtable_slot(rp, h);
    rentry_set(e, h, key, resp, cell, counts, (uint16_t)alen);
    rp->gen[0].bytes += rentry_bytes(rp, e);
    rp->inserts++;
}

/* whether resp has the replayed shape for query d; its armed cell and the cell's counts (both
 * NULL: none) */
static int
reply_fits(Replay *rp, PyObject *resp, const uint8_t *d, int aoff, int alen, uint64_t **counts_out,
           PyObject **cell_out)
{
    PyObject *cell = rp->armed_cell;
    const uint8_t *r = (const uint8_t *)PyBytes_AS_STRING(resp);
    Py_ssize_t L = PyBytes_GET_SIZE(resp);
    if (L < 12 || L > REPLY_MAX || r[0] != d[0] || r[1] != d[1] || (r[2] & 0x02)) {
        rp->refused++;
        return 0;
    }
    if (alen || aoff) {  /* ECS: ... 0 8 | len | family | source | scope | address, at the end */
        Py_ssize_t o = L - alen - 8;
        const uint8_t *q = d + aoff - 8;
        if (o < 12 || r[o] != 0 || r[o + 1] != 8 || r[o + 2] != 0 || r[o + 3] != 4 + alen
            || r[o + 4] != q[4] || r[o + 5] != q[5] || r[o + 6] != q[6]
            || memcmp(r + L - alen, d + aoff, (size_t)alen) != 0) {
            rp->refused++;
            return 0;
        }
    }
    uint64_t *counts = NULL;
    if (cell != NULL && cell != Py_None) {
        counts = cell_counts(rp, cell);
        if (counts == NULL) {
            PyErr_Clear();
            rp->refused++;
            return 0;
        }
    }
    *counts_out = counts;
    *cell_out = counts ? cell : NULL;
    return 1;
}

/* the entry for a key: the newer generation, else the older (copied to the newer) */
static rentry *
replay_find(Replay *rp, uint64_t h, const uint8_t *k, Py_ssize_t n)
{
    rentry *e = rtable_find(&rp->gen[0], h, k, n);
    if (e != NULL || rp->gen[1].used == 0)
        return e;
    e = rtable_find(&rp->gen[1], h, k, n);
    if (e == NULL)
        return NULL;
    rentry copy = *e;  /* rotating may empty gen[1]: hold what the copy needs first */
    Py_INCREF(copy.key);
    Py_INCREF(copy.resp);
    Py_XINCREF(copy.cell);
    e->pool = NULL;  /* the draws move with the copy */
    rentry *n2 = rtable_slot(rp, h);
    rentry_set(n2, h, copy.key, copy.resp, copy.cell, copy.counts, copy.alen);
    n2->pool = copy.pool;
    rp->gen[0].bytes += rentry_bytes(rp, n2);
    Py_DECREF(copy.key);
    Py_DECREF(copy.resp);
    Py_XDECREF(copy.cell);
    return n2;
}

/* keep resp, a pooled draw for key, in `slot` (-1: the next empty slot, else one at random) */
static void
replay_keep_pool(Replay *rp, uint64_t h, PyObject *key, PyObject *resp, const uint8_t *d, int aoff, int alen,
                 int slot)
{
    uint64_t *counts;
    PyObject *cell;
    if (rp->pool <= 0 || !reply_fits(rp, resp, d, aoff, alen, &counts, &cell))
        return;
    rentry *e = replay_find(rp, h, (const uint8_t *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    if (e != NULL && e->pool == NULL)
        return;  /* a fixed entry for the key: what it replays stands until the next reset */
    if (e == NULL) {
        rpool *p = PyMem_Malloc(sizeof(rpool) + (size_t)rp->pool * sizeof(p->v[0]));
        PyObject *empty = p ? PyBytes_FromStringAndSize("", 0) : NULL;
        if (empty == NULL) {
            PyMem_Free(p);
            PyErr_Clear();
            return;
        }
        p->n = 0;
        e = rtable_slot(rp, h);
        rentry_set(e, h, key, empty, NULL, NULL, 0);
        Py_DECREF(empty);
        e->pool = p;
        rp->gen[0].bytes += rentry_bytes(rp, e);  /* no draw yet: added below */
        rp->inserts++;
    }
    rpool *p = e->pool;
    if (slot < 0 || slot > p->n || slot >= rp->pool)
        slot = p->n < rp->pool ? p->n : (int)(replay_rand(rp) % (uint64_t)rp->pool);
    if (slot == p->n) {
        p->n++;
    } else {  /* a new draw in place of an old one */
        Py_DECREF(p->v[slot].resp);
        Py_XDECREF(p->v[slot].cell);
    }
    Py_INCREF(resp);
    p->v[slot].resp = resp;
    Py_XINCREF(cell);
    p->v[slot].cell = cell;
    p->v[slot].counts = counts;
    p->v[slot].alen = (uint16_t)alen;
    rp->gen[0].bytes += (size_t)PyBytes_GET_SIZE(resp);
}

/* the tree's buffer for the duration of one serve() call (released by replay_release) */
static int
replay_acquire(Replay *rp, Py_buffer *view)
{
    rp->t = NULL;
    if (rp->tree == NULL)
        return 0;
    if (PyObject_GetBuffer(rp->tree, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();  /* closed (an old database): exact addresses until the next reset */
        return 0;
    }
    if (view->len < (Py_ssize_t)rp->node_count * rp->node_octets) {
        PyBuffer_Release(view);
        return 0;
    }
    rp->t = view->buf;
    rp->tlen = view->len;
    return 1;
}

static void
replay_release(Replay *rp, Py_buffer *view, int held)
{
    if (held)
        PyBuffer_Release(view);
    rp->t = NULL;
}

static int
Replay_init(Replay *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"cap", "bounds", "pool", "refresh", "max_bytes", NULL};
    unsigned int cap = 16384;
    PyObject *bounds = NULL;
    int pool = 8, refresh = 4;
    unsigned long long max_bytes = 32ULL << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|IOiiK", names, &cap, &bounds, &pool, &refresh, &max_bytes))
        return -1;
    if (max_bytes < (1ULL << 16)) {
        PyErr_SetString(PyExc_ValueError, "max_bytes must be at least 65536");
        return -1;
    }
    self->max_bytes = (size_t)(max_bytes / 2);
    if (cap < 16 || cap > (1u << 22)) {
        PyErr_SetString(PyExc_ValueError, "cap must be in 16..4194304");
        return -1;
    }
    if (pool < 0 || pool > POOL_MAX || refresh < 1) {
        PyErr_SetString(PyExc_ValueError, "pool must be in 0..32 and refresh >= 1");
        return -1;
    }
    self->pool = pool;
    self->refresh = refresh;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)self;
    self->rs = seed ? seed : 0x9E3779B97F4A7C15ULL;
    self->nb = 1;
    if (bounds != NULL && bounds != Py_None) {
        PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence of seconds");
        if (seq == NULL)
            return -1;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
        if (m >= NB_MAX) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "too many bounds");
            return -1;
        }
        for (Py_ssize_t i = 0; i < m; i++) {
            double s = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
            if (s == -1.0 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return -1;
            }
            self->bounds[i] = (uint64_t)(s * 1e9);
        }
        Py_DECREF(seq);
        self->nb = (int)m + 1;
    }
    rtable_empty(&self->gen[0]);
    rtable_empty(&self->gen[1]);
    PyMem_Free(self->gen[0].slot);
    PyMem_Free(self->gen[1].slot);
    self->gen[0].slot = self->gen[1].slot = NULL;
    self->cap = cap;
    if (rtable_init(&self->gen[0], cap) < 0 || rtable_init(&self->gen[1], cap) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
Replay_dealloc(Replay *self)
{
    rtable_empty(&self->gen[0]);
    rtable_empty(&self->gen[1]);
    PyMem_Free(self->gen[0].slot);
    PyMem_Free(self->gen[1].slot);
    Py_XDECREF(self->tree);
    Py_XDECREF(self->armed_cell);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Replay_reset(Replay *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"tree", "node_count", "node_octets", "ip_version", "ipv4_start", NULL};
    PyObject *tree = Py_None;
    unsigned int node_count = 0, ipv4_start = 0;
    int node_octets = 0, ip_version = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OIiiI", names, &tree, &node_count, &node_octets,
                                     &ip_version, &ipv4_start))
        return NULL;
    if (tree != Py_None && (node_octets != 6 && node_octets != 7 && node_octets != 8)) {
        PyErr_SetString(PyExc_ValueError, "node_octets must be 6, 7 or 8 (24, 28 or 32-bit records)");
        return NULL;
    }
    if (tree != Py_None && ip_version != 4 && ip_version != 6) {
        PyErr_SetString(PyExc_ValueError, "ip_version must be 4 or 6");
        return NULL;
    }
    rtable_empty(&self->gen[0]);
    rtable_empty(&self->gen[1]);
    Py_CLEAR(self->tree);
    if (tree != Py_None) {
        Py_INCREF(tree);
        self->tree = tree;
    }
    self->node_count = node_count;
    self->node_octets = node_octets;
    self->ip_version = ip_version;
    self->ipv4_start = ipv4_start;
    self->armed = 0;
    Py_CLEAR(self->armed_cell);
    Py_RETURN_NONE;
}

static PyObject *
Replay_arm(Replay *self, PyObject *args)
{
    PyObject *cell;
    int pooled = 0;
    if (!PyArg_ParseTuple(args, "O|p", &cell, &pooled))
        return NULL;
    Py_INCREF(cell);
    Py_XSETREF(self->armed_cell, cell);
    self->armed = pooled && self->pool > 0 ? 2 : 1;
    Py_RETURN_NONE;
}

static PyObject *
Replay_stats(Replay *self, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsKsKsKsKsIsK}", "hits", self->hits, "misses", self->misses, "inserts",
                         self->inserts, "refused", self->refused, "rotations", self->rotations,
                         "pool_hits", self->pool_hits, "pool_draws", self->pool_draws,
                         "entries", self->gen[0].used + self->gen[1].used,
                         "bytes", (unsigned long long)(self->gen[0].bytes + self->gen[1].bytes));
}


/* key(data, addr) -> bytes or None: the key serve() would use (tests) */
static PyObject *
Replay_key(Replay *self, PyObject *args)
{
    Py_buffer q;
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "y*O", &q, &addr))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_addr(addr, &ss, &sl) < 0) {
        PyBuffer_Release(&q);
        return NULL;
    }
    Py_buffer tv;
    int held = replay_acquire(self, &tv);
    uint8_t key[KEY_MAX];
    int aoff = 0, alen = 0;
    Py_ssize_t k = make_key(self, q.buf, q.len, &ss, key, &aoff, &alen);
    replay_release(self, &tv, held);
    PyBuffer_Release(&q);
    if (k == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)key, k);
}

static PyMethodDef Replay_methods[] = {
    {"reset", (PyCFunction)(void (*)(void))Replay_reset, METH_VARARGS | METH_KEYWORDS,
     "reset(tree=None, node_count=0, node_octets=0, ip_version=0, ipv4_start=0): forget every "
     "entry; key source addresses by the search tree in buffer `tree` (None: exact addresses)"},
    {"arm", (PyCFunction)Replay_arm, METH_VARARGS,
     "arm(cell, pooled=False): the reply the running respond() returns may be replayed (pooled: "
     "it is one random draw of a distribution fixed for its key); its hits count in cell"},
    {"stats", (PyCFunction)Replay_stats, METH_NOARGS, "stats() -> dict of counters"},
    {"key", (PyCFunction)Replay_key, METH_VARARGS, "key(data, addr) -> bytes | None (the lookup key)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReplayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "filterdns.serve._mmsg.Replay",
    .tp_basicsize = sizeof(Replay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Replay(cap=16384, bounds=(), pool=8, refresh=4, max_bytes=32 MiB): fixed and pooled "
              "answers replayed in serve() (see _mmsg.c)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Replay_init,
    .tp_dealloc = (destructor)Replay_dealloc,
    .tp_methods = Replay_methods,
};

/* take(cell) -> list: the counts of an array('Q') cell, zeroed in the same step */
static PyObject *
take(PyObject *self, PyObject *cell)
{
    Py_buffer v;
    if (PyObject_GetBuffer(cell, &v, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    if (v.itemsize != 8) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_TypeError, "take() wants an array('Q')");
        return NULL;
    }
    Py_ssize_t m = v.len / 8;
    PyObject *out = PyList_New(m);
    uint64_t *c = v.buf;
    for (Py_ssize_t i = 0; out != NULL && i < m; i++) {
        PyObject *x = PyLong_FromUnsignedLongLong(c[i]);
        if (x == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, x);
    }
    if (out != NULL)
        memset(c, 0, (size_t)v.len);
    PyBuffer_Release(&v);
    return out;
}

static void
set_raw(struct mmsghdr *m, struct iovec *iov, void *buf, size_t len, void *addr, socklen_t alen)
{
    iov->iov_base = buf;
    iov->iov_len = len;
    memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_name = addr;
    m->msg_hdr.msg_namelen = alen;
}

static PyObject *
serve(PyObject *self, PyObject *args)
{
    int fd, n;
    PyObject *respond, *rpo = Py_None;
    if (!PyArg_ParseTuple(args, "iiO|O", &fd, &n, &respond, &rpo) || check_n(n) < 0)
        return NULL;
    Replay *rp = NULL;
    if (rpo != Py_None) {
        if (!PyObject_TypeCheck(rpo, &ReplayType)) {
            PyErr_SetString(PyExc_TypeError, "replay must be a Replay or None");
            return NULL;
        }
        rp = (Replay *)rpo;
    }
    int got = recv_into(fd, n);
    if (got < 0)
        return NULL;
    if (got == 0)
        return Py_BuildValue("(iO)", 0, Py_None);
    /* Pass 1, before any Python code runs (respond could, in principle, let another thread
     * reach the static buffers): replayed replies into the arena, the others out of the
     * static buffers into bytes. */
    PyObject *datas[MAX_BATCH], *addrs[MAX_BATCH], *keys[MAX_BATCH], *replies[MAX_BATCH];
    uint64_t hashes[MAX_BATCH];
    int aoffs[MAX_BATCH], alens[MAX_BATCH], pslots[MAX_BATCH];
    struct sockaddr_storage peer[MAX_BATCH];
    socklen_t peerlen[MAX_BATCH];
    int who[MAX_BATCH];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    uint8_t arena[ARENA];
    size_t used = 0;
    int i, k = 0, nhit = 0;
    Py_buffer tv;
    int held = rp ? replay_acquire(rp, &tv) : 0;
    for (i = 0; i < got; i++) {
        datas[i] = addrs[i] = keys[i] = NULL;
        memcpy(&peer[i], &raddr[i], rmsgs[i].msg_hdr.msg_namelen);
        peerlen[i] = rmsgs[i].msg_hdr.msg_namelen;
        const uint8_t *d = riov[i].iov_base;
        Py_ssize_t len = (Py_ssize_t)rmsgs[i].msg_len;
        if (rp != NULL) {
            uint64_t t0 = now_ns();
            uint8_t key[KEY_MAX];
            aoffs[i] = alens[i] = 0;
            Py_ssize_t kl = make_key(rp, d, len, &peer[i], key, &aoffs[i], &alens[i]);
            if (kl > 0) {
                uint64_t h = key_hash(key, kl);
                rentry *e = replay_find(rp, h, key, kl);
                pslots[i] = -1;
                PyObject *eresp = NULL;
                uint64_t *ecounts = NULL;
                int ealen = 0;
                if (e != NULL && e->pool != NULL) {  /* a pooled key */
                    rpool *p = e->pool;
                    uint64_t r = replay_rand(rp);
                    if (p->n == 0 || r % (uint64_t)rp->refresh == 0) {
                        /* a fresh draw from Python: the next slot while the pool grows, then
                         * one chosen at random */
                        pslots[i] = p->n < rp->pool ? p->n : (int)((r >> 20) % (uint64_t)rp->pool);
                        rp->pool_draws++;
                    } else {
                        int j = (int)((r >> 20) % (uint64_t)p->n);
                        eresp = p->v[j].resp;
                        ecounts = p->v[j].counts;
                        ealen = p->v[j].alen;
                        rp->pool_hits++;
                    }
                } else if (e != NULL) {
                    eresp = e->resp;
                    ecounts = e->counts;
                    ealen = e->alen;
                }
                Py_ssize_t L = eresp ? PyBytes_GET_SIZE(eresp) : 0;
                if (eresp != NULL && used + (size_t)L <= ARENA) {
                    uint8_t *out = arena + used;
                    memcpy(out, PyBytes_AS_STRING(eresp), (size_t)L);
                    out[0] = d[0];
                    out[1] = d[1];
                    if (ealen)
                        memcpy(out + L - ealen, d + aoffs[i], (size_t)ealen);
                    used += (size_t)L;
                    set_raw(&msgs[k], &iov[k], out, (size_t)L, &peer[i], peerlen[i]);
                    replies[k] = NULL;
                    who[k++] = i;
                    nhit++;
                    rp->hits++;
                    count_hit(rp, ecounts, now_ns() - t0);
                    continue;
                }
                keys[i] = PyBytes_FromStringAndSize((const char *)key, kl);
                if (keys[i] == NULL)
                    goto fail1;
                hashes[i] = h;
                rp->misses++;
            }
        }
        datas[i] = PyBytes_FromStringAndSize((const char *)d, len);
        addrs[i] = datas[i] ? addr_tuple(&raddr[i]) : NULL;
        if (addrs[i] == NULL)
            goto fail1;
    }
    if (rp != NULL)
        replay_release(rp, &tv, held);
    held = 0;
    /* Pass 2: respond to the others in order */
    int failed = 0;
    for (i = 0; i < got && !failed; i++) {
        if (datas[i] == NULL)
            continue;  /* replayed */
        if (rp != NULL) {
            rp->armed = 0;
            Py_CLEAR(rp->armed_cell);
        }
        PyObject *r = PyObject_CallFunctionObjArgs(respond, datas[i], addrs[i], NULL);
        if (r == NULL) {
            failed = 1;
            break;
        }
        if (r == Py_None) {
            Py_DECREF(r);
            continue;
        }
        if (PyObject_GetBuffer(r, &views[k], PyBUF_SIMPLE) < 0) {
            Py_DECREF(r);
            failed = 1;
            break;
        }
        if (rp != NULL && rp->armed == 1 && keys[i] != NULL && PyBytes_CheckExact(r))
            replay_keep(rp, hashes[i], keys[i], r, (const uint8_t *)PyBytes_AS_STRING(datas[i]), aoffs[i], alens[i]);
        else if (rp != NULL && rp->armed == 2 && keys[i] != NULL && PyBytes_CheckExact(r))
            replay_keep_pool(rp, hashes[i], keys[i], r, (const uint8_t *)PyBytes_AS_STRING(datas[i]), aoffs[i],
                             alens[i], pslots[i]);
        replies[k] = r;
        who[k] = i;
        set_msg(&msgs[k], &iov[k], &views[k], &peer[i], peerlen[i]);
        k++;
    }
    if (rp != NULL) {
        rp->armed = 0;
        Py_CLEAR(rp->armed_cell);
    }
    PyObject *exc_type = NULL, *exc_value = NULL, *exc_tb = NULL;
    if (failed)
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);  /* send what was made, then raise */
    int err = 0;
    int sent = k ? send_msgs(fd, msgs, k, &err) : 0;
    PyObject *unsent = Py_None;
    Py_INCREF(unsent);
    if (sent < k && !failed) {
        Py_DECREF(unsent);
        unsent = PyList_New(k - sent);
        for (int j = sent; unsent != NULL && j < k; j++) {
            PyObject *data = replies[j], *addr = addrs[who[j]];
            if (data == NULL) {  /* a replayed reply: bytes and an address tuple only now */
                data = PyBytes_FromStringAndSize(iov[j].iov_base, (Py_ssize_t)iov[j].iov_len);
                addr = data ? addr_tuple(&peer[who[j]]) : NULL;
                PyObject *item = addr ? PyTuple_Pack(2, data, addr) : NULL;
                Py_XDECREF(data);
                Py_XDECREF(addr);
                if (item == NULL) {
                    Py_CLEAR(unsent);
                    break;
                }
                PyList_SET_ITEM(unsent, j - sent, item);
                continue;
            }
            PyObject *item = PyTuple_Pack(2, data, addr);
            if (item == NULL) {
                Py_CLEAR(unsent);
                break;
            }
            PyList_SET_ITEM(unsent, j - sent, item);
        }
    }
    for (int j = 0; j < k; j++) {
        if (replies[j] != NULL) {
            PyBuffer_Release(&views[j]);
            Py_DECREF(replies[j]);
        }
    }
    for (i = 0; i < got; i++) {
        Py_XDECREF(datas[i]);
        Py_XDECREF(addrs[i]);
        Py_XDECREF(keys[i]);
    }
    if (failed) {
        Py_XDECREF(unsent);
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return NULL;
    }
    if (unsent == NULL)
        return NULL;
    return Py_BuildValue("(iN)", got, unsent);

fail1:
    if (rp != NULL)
        replay_release(rp, &tv, held);
    for (int j = 0; j <= i && j < got; j++) {
        Py_XDECREF(datas[j]);
        Py_XDECREF(addrs[j]);
        Py_XDECREF(keys[j]);
    }
    return NULL;
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS, "recv_batch(fd, n) -> [(data, addr), ...] (recvmmsg)"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, replies, start=0) -> (sent, errno) (sendmmsg; stops at EAGAIN)"},
    {"serve", serve, METH_VARARGS,
     "serve(fd, n, respond, replay=None) -> (received, unsent) (recvmmsg, respond(data, addr) "
     "each or a Replay's kept reply, sendmmsg)"},
    {"take", take, METH_O, "take(cell) -> list: an array('Q')'s counts, zeroed in the same step"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mmsg", "Batched UDP receive and send (recvmmsg/sendmmsg).", -1, methods,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    if (PyType_Ready(&ReplayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0
                      || PyModule_AddObjectRef(m, "Replay", (PyObject *)&ReplayType) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
