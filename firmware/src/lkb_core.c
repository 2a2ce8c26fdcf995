/* labkit test board protocol core: see docs/board-protocol.md. Portable C99, no
 * dynamic allocation, no floating-point library calls beyond comparisons. */
#include "lkb_core.h"

#include <string.h>

enum {
    CMD_HELLO = 0x01, CMD_PING = 0x02, CMD_STATUS = 0x03, CMD_GET_CONFIG = 0x04,
    CMD_CONFIGURE = 0x05, CMD_RESET = 0x06, CMD_READ = 0x10, CMD_VMM = 0x11,
    CMD_ROUTE = 0x12, CMD_PROGRAM = 0x20, CMD_ERASE = 0x21, CMD_ARM = 0x22,
    CMD_GET_LIMITS = 0x30, CMD_SET_LIMITS = 0x31, CMD_TEMPERATURE = 0x40
};
enum { CAP_READ = 1, CAP_VMM = 2, CAP_PROGRAM = 4, CAP_ERASE = 8, CAP_TEMPERATURE = 16,
       CAP_ROUTE = 32, CAP_RESET = 64 };
#define REPLY_BIT 0x80u
#define HEADER 7u

/* ------------------------------------------------------------- byte order */

static uint16_t get16(const uint8_t *p)
{
#ifdef LKB_BYTE_ORDER_SLIP /* deliberately wrong (big-endian): the conformance suite must fail */
    return (uint16_t)((p[0] << 8) | p[1]);
#else
    return (uint16_t)(p[0] | (p[1] << 8));
#endif
}

static void put16(uint8_t *p, uint16_t v)
{
#ifdef LKB_BYTE_ORDER_SLIP
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
#else
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
#endif
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static double getf(const uint8_t *p) /* IEEE-754 binary64, little-endian on the wire */
{
    uint64_t u = 0;
    double d;
    int i;
    for (i = 7; i >= 0; i--)
        u = (u << 8) | p[i];
    memcpy(&d, &u, sizeof d);
    return d;
}

static void putf(uint8_t *p, double d)
{
    uint64_t u;
    int i;
    memcpy(&u, &d, sizeof u);
    for (i = 0; i < 8; i++, u >>= 8)
        p[i] = (uint8_t)u;
}

static int finite(double x) { return x == x && x - x == 0.0; } /* not NaN, not +-inf */

/* ------------------------------------------------------------------ CRC-32 */

uint32_t lkb_crc32(const uint8_t *data, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
#ifdef LKB_CRC_VARIANT_BZIP2 /* deliberately wrong variant: MSB-first, not reflected */
    while (n--) {
        int k;
        crc ^= (uint32_t)*data++ << 24;
        for (k = 0; k < 8; k++)
            crc = (crc & 0x80000000u) ? (crc << 1) ^ 0x04C11DB7u : crc << 1;
    }
#else /* CRC-32 (IEEE 802.3): reflected poly 0xEDB88320, a nibble at a time (64 bytes of table) */
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
        0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
        0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    while (n--) {
        crc ^= *data++;
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
#endif
    return crc ^ 0xFFFFFFFFu;
}

/* -------------------------------------------------------------------- COBS */

int lkb_cobs_decode(uint8_t *buf, size_t n, size_t *out)
{
    size_t r = 0, w = 0;
    while (r < n) {
        size_t code = buf[r], k;
        if (code == 0 || r + code > n)
            return -1; /* a 0x00 inside, or a block running past the end */
        r++;
        for (k = 1; k < code; k++) {
            if (buf[r] == 0)
                return -1;
            buf[w++] = buf[r++];
        }
        if (code < 0xFF && r < n)
            buf[w++] = 0;
    }
    *out = w;
    return 0;
}

static void send_stuffed(const uint8_t *raw, size_t n)
{
    size_t i = 0;
    static const uint8_t delimiter = 0;
    for (;;) {
        size_t j = i;
        uint8_t code;
        while (j < n && raw[j] != 0 && j - i < 254)
            j++;
        code = (uint8_t)(j - i + 1);
        lkb_hal_write(&code, 1);
        lkb_hal_write(raw + i, j - i);
        if (j >= n)
            break;
        i = (code == 0xFF) ? j : j + 1; /* skip the 0x00 the code stands for */
        if (code == 0xFF && i == n)
            break;
    }
    lkb_hal_write(&delimiter, 1);
}

/* ----------------------------------------------------------------- replies */

static void send_reply(lkb_board *b, uint16_t seq, uint8_t cmd, uint8_t status, size_t len)
{
    uint8_t *t = b->tx;
    t[0] = LKB_PROTOCOL_VERSION;
    put16(t + 1, seq);
    t[3] = (uint8_t)((cmd & 0x7Fu) | REPLY_BIT);
    t[4] = status;
    put16(t + 5, (uint16_t)len);
    put32(t + HEADER + len, lkb_crc32(t, HEADER + len));
    send_stuffed(t, HEADER + len + 4);
}

static uint8_t fail(lkb_board *b, size_t *len, uint8_t status, const char *msg)
{
    size_t n = strlen(msg);
    if (n > 200)
        n = 200;
    memcpy(b->tx + HEADER, msg, n);
    *len = n;
    return status;
}

static uint8_t *out_of(lkb_board *b) { return b->tx + HEADER; }

/* ---------------------------------------------------------------- commands */

static const lkb_config *cfg(void) { return lkb_hal_config(); }

static uint32_t capabilities(void)
{
    const lkb_config *c = cfg();
    uint32_t caps = CAP_READ | CAP_VMM | CAP_PROGRAM | CAP_ERASE | CAP_RESET;
    if (c->has_temperature)
        caps |= CAP_TEMPERATURE;
    if (c->has_smu_route)
        caps |= CAP_ROUTE;
    return caps;
}

static size_t put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s);
    if (n > 255)
        n = 255;
    p[0] = (uint8_t)n;
    memcpy(p + 1, s, n);
    return n + 1;
}

static uint8_t do_hello(lkb_board *b, size_t *len)
{
    const lkb_config *c = cfg();
    uint8_t *o = out_of(b);
    size_t pos = 0, k;
    const double *sheet = &c->datasheet.precharge_v;
    o[pos++] = LKB_PROTOCOL_VERSION;
    put32(o + pos, b->boot_id), pos += 4;
    put32(o + pos, capabilities()), pos += 4;
    put16(o + pos, LKB_MAX_PAYLOAD), pos += 2;
    o[pos++] = c->rows;
    o[pos++] = c->cols;
    o[pos++] = c->npairs;
    for (k = 0; k < c->npairs; k++) {
        o[pos++] = c->pairs[k][0];
        o[pos++] = c->pairs[k][1];
    }
    pos += put_str(o + pos, c->firmware);
    pos += put_str(o + pos, c->board_serial);
    pos += put_str(o + pos, c->chip_id);
    putf(o + pos, sheet[0]), pos += 8;
    putf(o + pos, c->datasheet.threshold_v), pos += 8;
    putf(o + pos, c->datasheet.bitline_capacitance_f), pos += 8;
    putf(o + pos, c->datasheet.reference_current_a), pos += 8;
    putf(o + pos, c->datasheet.cell_current_lo_a), pos += 8;
    putf(o + pos, c->datasheet.cell_current_hi_a), pos += 8;
    putf(o + pos, c->datasheet.erased_current_a), pos += 8;
    put32(o + pos, b->arm_timeout_ms), pos += 4;
    *len = pos;
    return LKB_OK;
}

static uint8_t do_status(lkb_board *b, size_t *len)
{
    uint8_t *o = out_of(b);
    o[0] = (uint8_t)(b->armed ? 1 : 0);
    put32(o + 1, b->boot_id);
    put32(o + 5, b->program_pulses);
    put32(o + 9, b->erase_pulses);
    put32(o + 13, b->frames);
    put32(o + 17, b->crc_errors);
    putf(o + 21, (double)(uint32_t)(b->now_ms - b->boot_ms) / 1000.0);
    *len = 29;
    return LKB_OK;
}

static size_t put_settings(uint8_t *o, const lkb_settings *s)
{
    putf(o, s->integration_s);
    putf(o + 8, s->read_v);
    o[16] = s->input_bits;
    o[17] = s->tdc_bits;
    putf(o + 18, s->tdc_lsb_s);
    return 26;
}

static int within(double x, const double range[2]) { return finite(x) && x >= range[0] && x <= range[1]; }

static uint8_t do_configure(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    lkb_settings s;
    if (n != 26)
        return fail(b, len, LKB_BAD_ARGUMENT, "CONFIGURE payload must be 26 bytes");
    s.integration_s = getf(in);
    s.read_v = getf(in + 8);
    s.input_bits = in[16];
    s.tdc_bits = in[17];
    s.tdc_lsb_s = getf(in + 18);
    if (s.input_bits < 1 || s.input_bits > 15 || s.tdc_bits < 1 || s.tdc_bits > 16)
        return fail(b, len, LKB_BAD_ARGUMENT, "input_bits must be 1..15 and tdc_bits 1..16");
    if (!finite(s.tdc_lsb_s) || !(s.tdc_lsb_s > 0))
        return fail(b, len, LKB_BAD_ARGUMENT, "tdc_lsb_s must be a finite number > 0");
    if (!within(s.integration_s, b->limits.integration_s))
        return fail(b, len, LKB_OUT_OF_RANGE, "integration time outside the board's limits");
    if (!within(s.read_v, b->limits.read_v))
        return fail(b, len, LKB_OUT_OF_RANGE, "read_voltage outside the board's limits");
    if (lkb_hal_configure(&s) || lkb_hal_dac_set(LKB_DAC_READ, s.read_v))
        return fail(b, len, LKB_HARDWARE_FAULT, "configure failed");
    b->settings = s;
    *len = put_settings(out_of(b), &b->settings);
    return LKB_OK;
}

static uint8_t do_read(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    uint8_t *o = out_of(b);
    size_t count, k;
    if (n < 2 || n != 2 + 2 * (size_t)get16(in))
        return fail(b, len, LKB_BAD_ARGUMENT, "READ payload length does not match its count");
    count = get16(in);
    if (2 + 8 * count > LKB_MAX_PAYLOAD)
        return fail(b, len, LKB_BAD_ARGUMENT, "READ reply would exceed max_payload");
    for (k = 0; k < count; k++)
        if (in[2 + 2 * k] >= c->rows || in[3 + 2 * k] >= c->cols)
            return fail(b, len, LKB_BAD_ARGUMENT, "cell outside the array");
    put16(o, (uint16_t)count);
    for (k = 0; k < count; k++) {
        double amps;
        if (lkb_hal_read_current(in[2 + 2 * k], in[3 + 2 * k], &amps))
            return fail(b, len, LKB_HARDWARE_FAULT, "cell read failed");
        putf(o + 2 + 8 * k, amps);
    }
    *len = 2 + 8 * count;
    return LKB_OK;
}

static uint8_t do_vmm(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    uint8_t *o = out_of(b);
    uint16_t ticks[LKB_MAX_ROWS], counts[LKB_MAX_COLS];
    size_t batch, rows, v, k;
    double tick_s;
    if (n < 3)
        return fail(b, len, LKB_BAD_ARGUMENT, "VMM payload shorter than its header");
    batch = get16(in);
    rows = in[2];
    if (n != 3 + 2 * batch * rows)
        return fail(b, len, LKB_BAD_ARGUMENT, "VMM payload length does not match B x rows");
    if (rows != c->rows)
        return fail(b, len, LKB_BAD_ARGUMENT, "VMM vectors must have one value per row");
    if (3 + 2 * batch * c->cols > LKB_MAX_PAYLOAD)
        return fail(b, len, LKB_BAD_ARGUMENT, "VMM reply would exceed max_payload");
    for (k = 0; k < batch * rows; k++)
        if (get16(in + 3 + 2 * k) > (1u << b->settings.input_bits))
            return fail(b, len, LKB_OUT_OF_RANGE, "input tick exceeds 2**input_bits");
    tick_s = b->settings.integration_s / (double)(1u << b->settings.input_bits);
    put16(o, (uint16_t)batch);
    o[2] = c->cols;
    for (v = 0; v < batch; v++) {
        for (k = 0; k < rows; k++)
            ticks[k] = get16(in + 3 + 2 * (v * rows + k));
        if (lkb_hal_vmm(ticks, tick_s, counts))
            return fail(b, len, LKB_HARDWARE_FAULT, "VMM failed");
        for (k = 0; k < c->cols; k++)
            put16(o + 3 + 2 * (v * c->cols + k), counts[k]);
    }
    *len = 3 + 2 * batch * c->cols;
    return LKB_OK;
}

static uint8_t applied(lkb_board *b, size_t *len, size_t count, uint32_t total)
{
    put16(out_of(b), (uint16_t)count);
    put32(out_of(b) + 2, total);
    *len = 6;
    return LKB_OK;
}

static uint8_t do_program(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    size_t count, k;
    if (n < 2 || n != 2 + 18 * (size_t)get16(in))
        return fail(b, len, LKB_BAD_ARGUMENT, "PROGRAM payload length does not match its count");
    count = get16(in);
    if (!b->armed)
        return fail(b, len, LKB_NOT_ARMED, "programming refused: high voltage not armed");
    for (k = 0; k < count; k++) { /* every pulse is checked before any is applied */
        const uint8_t *p = in + 2 + 18 * k;
        double v = getf(p + 2), w = getf(p + 10);
        if (p[0] >= c->rows || p[1] >= c->cols)
            return fail(b, len, LKB_BAD_ARGUMENT, "cell outside the array");
        if (!finite(v) || v < 0 || v > b->limits.max_program_v)
            return fail(b, len, LKB_OUT_OF_RANGE, "program voltage outside the board's limits");
        if (!within(w, b->limits.program_width_s))
            return fail(b, len, LKB_OUT_OF_RANGE, "program width outside the board's limits");
    }
    for (k = 0; k < count; k++) {
        const uint8_t *p = in + 2 + 18 * k;
        if (lkb_hal_select(p[0], p[1]) || lkb_hal_dac_set(LKB_DAC_PROGRAM, getf(p + 2)) ||
            lkb_hal_pulse(LKB_PULSE_PROGRAM, getf(p + 10))) {
            lkb_hal_select(-1, -1);
            b->program_pulses += (uint32_t)k;
            return fail(b, len, LKB_HARDWARE_FAULT, "program pulse failed");
        }
    }
    lkb_hal_select(-1, -1);
    b->program_pulses += (uint32_t)count;
    return applied(b, len, count, b->program_pulses);
}

static uint8_t do_erase(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    size_t count, k;
    double v, w;
    if (n < 18 || n != 18 + (size_t)get16(in + 16))
        return fail(b, len, LKB_BAD_ARGUMENT, "ERASE payload length does not match its count");
    v = getf(in);
    w = getf(in + 8);
    count = get16(in + 16);
    if (!b->armed)
        return fail(b, len, LKB_NOT_ARMED, "erase refused: high voltage not armed");
    for (k = 0; k < count; k++)
        if (in[18 + k] >= c->rows)
            return fail(b, len, LKB_BAD_ARGUMENT, "row outside the array");
    if (!finite(v) || v < 0 || v > b->limits.max_erase_v)
        return fail(b, len, LKB_OUT_OF_RANGE, "erase voltage outside the board's limits");
    if (!within(w, b->limits.erase_width_s))
        return fail(b, len, LKB_OUT_OF_RANGE, "erase width outside the board's limits");
    for (k = 0; k < count; k++) {
        if (lkb_hal_select(in[18 + k], -1) || lkb_hal_dac_set(LKB_DAC_ERASE, v) ||
            lkb_hal_pulse(LKB_PULSE_ERASE, w)) {
            lkb_hal_select(-1, -1);
            b->erase_pulses += (uint32_t)k;
            return fail(b, len, LKB_HARDWARE_FAULT, "erase pulse failed");
        }
    }
    lkb_hal_select(-1, -1);
    b->erase_pulses += (uint32_t)count;
    return applied(b, len, count, b->erase_pulses);
}

static void disarm(lkb_board *b)
{
    lkb_hal_hv_enable(0);
    b->armed = 0;
}

static uint8_t do_arm(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    if (n != 1 || in[0] > 1)
        return fail(b, len, LKB_BAD_ARGUMENT, "ARM payload must be one byte, 0 or 1");
    if (in[0]) {
        if (lkb_hal_hv_enable(1)) {
            disarm(b);
            return fail(b, len, LKB_HARDWARE_FAULT, "high voltage did not come up");
        }
        b->armed = 1;
    } else {
        disarm(b);
    }
    out_of(b)[0] = (uint8_t)b->armed;
    *len = 1;
    return LKB_OK;
}

static void put_limits(uint8_t *o, const lkb_limits *l)
{
    const double v[11] = {l->max_program_v, l->max_erase_v, l->program_width_s[0], l->program_width_s[1],
                          l->erase_width_s[0], l->erase_width_s[1], l->read_v[0], l->read_v[1],
                          l->integration_s[0], l->integration_s[1], l->max_compliance_a};
    int k;
    for (k = 0; k < 11; k++)
        putf(o + 8 * k, v[k]);
}

static int range_ok(const double want[2], const double hard[2])
{
    return want[0] >= hard[0] && want[1] <= hard[1] && want[0] <= want[1];
}

static uint8_t do_set_limits(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_limits *h = &cfg()->hard_limits;
    lkb_limits l;
    double v[11];
    int k;
    if (n != 88)
        return fail(b, len, LKB_BAD_ARGUMENT, "SET_LIMITS payload must be 88 bytes");
    for (k = 0; k < 11; k++) {
        v[k] = getf(in + 8 * k);
        if (!finite(v[k]))
            return fail(b, len, LKB_BAD_ARGUMENT, "limits must be finite numbers");
    }
    l.max_program_v = v[0];
    l.max_erase_v = v[1];
    l.program_width_s[0] = v[2], l.program_width_s[1] = v[3];
    l.erase_width_s[0] = v[4], l.erase_width_s[1] = v[5];
    l.read_v[0] = v[6], l.read_v[1] = v[7];
    l.integration_s[0] = v[8], l.integration_s[1] = v[9];
    l.max_compliance_a = v[10];
    if (l.max_program_v > h->max_program_v || l.max_erase_v > h->max_erase_v ||
        l.max_compliance_a > h->max_compliance_a || !range_ok(l.program_width_s, h->program_width_s) ||
        !range_ok(l.erase_width_s, h->erase_width_s) || !range_ok(l.read_v, h->read_v) ||
        !range_ok(l.integration_s, h->integration_s))
        return fail(b, len, LKB_OUT_OF_RANGE, "limits looser than the board's hardware limits");
    b->limits = l;
    put_limits(out_of(b), &b->limits);
    *len = 88;
    return LKB_OK;
}

static uint8_t do_route(lkb_board *b, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    int off;
    if (n != 2)
        return fail(b, len, LKB_BAD_ARGUMENT, "ROUTE payload must be 2 bytes");
    off = in[0] == 0xFF && in[1] == 0xFF;
    if (!off && (in[0] >= c->rows || in[1] >= c->cols))
        return fail(b, len, LKB_BAD_ARGUMENT, "cell outside the array");
    if (off ? lkb_hal_route_smu(-1, -1) : lkb_hal_route_smu(in[0], in[1]))
        return fail(b, len, LKB_HARDWARE_FAULT, "routing failed");
    out_of(b)[0] = in[0];
    out_of(b)[1] = in[1];
    *len = 2;
    return LKB_OK;
}

static uint8_t execute(lkb_board *b, uint8_t cmd, const uint8_t *in, size_t n, size_t *len)
{
    const lkb_config *c = cfg();
    *len = 0;
    switch (cmd) {
    case CMD_HELLO: return do_hello(b, len);
    case CMD_PING:
        memmove(out_of(b), in, n); /* in may lie in rx, never in tx: a plain copy */
        *len = n;
        return LKB_OK;
    case CMD_STATUS: return do_status(b, len);
    case CMD_GET_CONFIG: *len = put_settings(out_of(b), &b->settings); return LKB_OK;
    case CMD_CONFIGURE: return do_configure(b, in, n, len);
    case CMD_RESET:
        if (n != 0)
            return fail(b, len, LKB_BAD_ARGUMENT, "RESET takes no payload");
        b->reboot_pending = 1;
        return LKB_OK;
    case CMD_READ: return do_read(b, in, n, len);
    case CMD_VMM: return do_vmm(b, in, n, len);
    case CMD_ROUTE:
        if (!c->has_smu_route)
            break;
        return do_route(b, in, n, len);
    case CMD_PROGRAM: return do_program(b, in, n, len);
    case CMD_ERASE: return do_erase(b, in, n, len);
    case CMD_ARM: return do_arm(b, in, n, len);
    case CMD_GET_LIMITS: put_limits(out_of(b), &b->limits); *len = 88; return LKB_OK;
    case CMD_SET_LIMITS: return do_set_limits(b, in, n, len);
    case CMD_TEMPERATURE:
        if (n != 0)
            return fail(b, len, LKB_BAD_ARGUMENT, "TEMPERATURE takes no payload");
        putf(out_of(b), lkb_hal_temperature_k());
        *len = 8;
        return LKB_OK;
    default: break;
    }
    return fail(b, len, LKB_UNKNOWN_COMMAND, "unknown command");
}

/* ------------------------------------------------------------------ frames */

static lkb_replay *replay_find(lkb_board *b, uint16_t seq, uint8_t cmd, uint32_t crc)
{
    unsigned k;
    for (k = 0; k < LKB_REPLAY_SLOTS; k++) {
        lkb_replay *r = &b->replay[k];
        if (r->used && r->seq == seq && r->cmd == cmd && r->crc == crc)
            return r;
    }
    return NULL;
}

static void boot(lkb_board *b, uint32_t now_ms)
{
    uint32_t old = b->boot_id;
    disarm(b);
    memset(b->replay, 0, sizeof b->replay);
    b->replay_next = 0;
    b->rx_len = 0;
    b->rx_overflow = 0;
    b->limits = cfg()->hard_limits;
    b->settings = cfg()->default_settings;
    lkb_hal_configure(&b->settings);
    lkb_hal_dac_set(LKB_DAC_READ, b->settings.read_v);
    lkb_hal_route_smu(-1, -1);
    do
        b->boot_id = lkb_hal_entropy();
    while (b->boot_id == old);
    b->program_pulses = b->erase_pulses = b->frames = b->crc_errors = 0;
    b->boot_ms = b->last_rx_ms = b->now_ms = now_ms;
    b->reboot_pending = 0;
}

void lkb_init(lkb_board *b, uint32_t now_ms, uint32_t arm_timeout_ms)
{
    memset(b, 0, sizeof *b);
    b->arm_timeout_ms = arm_timeout_ms;
    boot(b, now_ms);
}

void lkb_tick(lkb_board *b, uint32_t now_ms)
{
    b->now_ms = now_ms;
    if (b->armed && (uint32_t)(now_ms - b->last_rx_ms) >= b->arm_timeout_ms)
        disarm(b); /* no host traffic: never leave the high voltage armed */
}

static void handle(lkb_board *b)
{
    uint8_t *raw = b->rx;
    size_t n, len;
    uint16_t seq;
    uint8_t cmd, status;
    uint32_t crc;
    if (lkb_cobs_decode(raw, b->rx_len, &n) || n < LKB_OVERHEAD) {
        b->crc_errors++;
        return; /* nothing trustworthy to answer to */
    }
    seq = get16(raw + 1);
    cmd = raw[3];
    crc = lkb_crc32(raw, n - 4);
    if (crc != get32(raw + n - 4)) {
        b->crc_errors++;
        (void)fail(b, &len, LKB_BAD_CRC, "crc error");
        send_reply(b, seq, cmd, LKB_BAD_CRC, len);
        return;
    }
    if (get16(raw + 5) != n - LKB_OVERHEAD) {
        b->crc_errors++;
        (void)fail(b, &len, LKB_BAD_FRAME, "length error");
        send_reply(b, seq, cmd, LKB_BAD_FRAME, len);
        return;
    }
    if (cmd & REPLY_BIT)
        return; /* a reply is not for the board */
    b->frames++;
    b->last_rx_ms = b->now_ms;
    if (raw[0] != LKB_PROTOCOL_VERSION) {
        (void)fail(b, &len, LKB_BAD_VERSION, "board speaks version 1");
        send_reply(b, seq, cmd, LKB_BAD_VERSION, len);
        return;
    }
    if (cmd == CMD_PROGRAM || cmd == CMD_ERASE) {
        lkb_replay *r = replay_find(b, seq, cmd, crc);
        if (r) { /* a retry: the same answer, no second pulse */
            memcpy(out_of(b), r->payload, sizeof r->payload);
            len = r->status == LKB_OK ? sizeof r->payload : 0;
            send_reply(b, seq, cmd, r->status, len);
            return;
        }
    }
    status = execute(b, cmd, raw + HEADER, n - LKB_OVERHEAD, &len);
    if (cmd == CMD_PROGRAM || cmd == CMD_ERASE) {
        lkb_replay *r = &b->replay[b->replay_next];
        b->replay_next = (b->replay_next + 1) % LKB_REPLAY_SLOTS;
        r->used = 1, r->seq = seq, r->cmd = cmd, r->crc = crc, r->status = status;
        memcpy(r->payload, out_of(b), sizeof r->payload);
    }
    send_reply(b, seq, cmd, status, len);
    if (b->reboot_pending)
        boot(b, b->now_ms);
}

void lkb_rx(lkb_board *b, const uint8_t *data, size_t n, uint32_t now_ms)
{
    size_t k;
    lkb_tick(b, now_ms); /* a frame after a long silence finds the board disarmed */
    for (k = 0; k < n; k++) {
        uint8_t c = data[k];
        if (c == 0) {
            if (!b->rx_overflow && b->rx_len)
                handle(b);
            b->rx_len = 0;
            b->rx_overflow = 0;
        } else if (!b->rx_overflow) {
            if (b->rx_len == sizeof b->rx) {
                b->rx_overflow = 1; /* longer than any frame: drop it up to the next 0x00 */
                b->crc_errors++;
            } else {
                b->rx[b->rx_len++] = c;
            }
        }
    }
}
