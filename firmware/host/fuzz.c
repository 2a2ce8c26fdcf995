/* Fuzzer of the protocol core (host build with -fsanitize=address,undefined).
 *
 *   build/fuzz [FRAMES] [SEED]
 *
 * Feeds FRAMES inputs (default 1e6) into lkb_rx: random bytes, valid frames of every
 * command with random payloads (ARM frames among them, so pulses run), valid frames
 * with flipped bytes, truncated and overlong frames, in random chunks. Checks after
 * every input: every byte the board sent is a well-formed reply frame (COBS, CRC,
 * length), no pulse ever ran without the high voltage, and the board never took
 * longer than 100 ms over one input (a hang). A sanitizer finding aborts the run
 * (a crash). Prints one summary line; exit status 0 only when all held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hal_model.h"
#include "lkb_core.h"

static lkb_board board;
static uint8_t reply[LKB_WIRE_MAX + 16];
static size_t reply_len;
static unsigned long replies, bad_replies, reply_overflow;
static uint64_t rng_state = 88172645463325252ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void check_reply(void)
{
    size_t n;
    replies++;
    if (lkb_cobs_decode(reply, reply_len, &n) || n < LKB_OVERHEAD ||
        lkb_crc32(reply, n - 4) != ((uint32_t)reply[n - 4] | (uint32_t)reply[n - 3] << 8 |
                                    (uint32_t)reply[n - 2] << 16 | (uint32_t)reply[n - 1] << 24) ||
        (size_t)(reply[5] | reply[6] << 8) != n - LKB_OVERHEAD || !(reply[3] & 0x80))
        bad_replies++;
}

void lkb_hal_write(const uint8_t *data, size_t n)
{
    size_t k;
    for (k = 0; k < n; k++) {
        if (data[k] == 0) {
            check_reply();
            reply_len = 0;
        } else if (reply_len < sizeof reply) {
            reply[reply_len++] = data[k];
        } else {
            reply_overflow++;
        }
    }
}

static size_t stuff(const uint8_t *raw, size_t n, uint8_t *out)
{
    size_t w = 0, i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && raw[j] != 0 && j - i < 254)
            j++;
        out[w++] = (uint8_t)(j - i + 1);
        memcpy(out + w, raw + i, j - i);
        w += j - i;
        if (j >= n || (j - i == 254 && j == n))
            break;
        i = (j - i == 254) ? j : j + 1;
    }
    out[w++] = 0;
    return w;
}

static const uint8_t commands[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12,
                                   0x20, 0x21, 0x22, 0x30, 0x31, 0x40, 0x00, 0x7F, 0x99};

static void put_double(uint8_t *p)
{
    static const double special[] = {0.0, -1.0, 1e-6, 1e-3, 5.5, 13.0, 1e300, 2.5, 1.8, 1e-9};
    double d;
    uint64_t u;
    int k;
    if (rnd() % 4) {
        d = special[rnd() % 10];
        if (rnd() % 2)
            d *= (double)(rnd() % 1000) / 500.0;
        memcpy(&u, &d, 8);
    } else {
        u = ((uint64_t)rnd() << 32) | rnd(); /* any bits: NaN, inf, subnormal */
    }
    for (k = 0; k < 8; k++, u >>= 8)
        p[k] = (uint8_t)u;
}

/* a well-formed request (valid CRC) with a plausible but random payload */
static size_t valid_request(uint8_t *raw)
{
    uint8_t cmd = commands[rnd() % sizeof commands];
    size_t len = 0, k, count;
    uint8_t *p = raw + 7;
    if (rnd() % 6 == 0)
        cmd = 0x22; /* ARM often, so that PROGRAM and ERASE pulse */
    switch (cmd) {
    case 0x22: p[0] = (uint8_t)(rnd() % 5 ? 1 : rnd() % 3); len = 1; break;
    case 0x20:
        count = rnd() % 8;
        p[0] = (uint8_t)count, p[1] = 0;
        for (k = 0; k < count; k++) {
            p[2 + 18 * k] = (uint8_t)(rnd() % 18);
            p[3 + 18 * k] = (uint8_t)(rnd() % 18);
            put_double(p + 4 + 18 * k);
            put_double(p + 12 + 18 * k);
        }
        len = 2 + 18 * count;
        break;
    case 0x21:
        put_double(p), put_double(p + 8);
        count = rnd() % 5;
        p[16] = (uint8_t)count, p[17] = 0;
        for (k = 0; k < count; k++)
            p[18 + k] = (uint8_t)(rnd() % 18);
        len = 18 + count;
        break;
    case 0x11:
        count = rnd() % ((LKB_MAX_PAYLOAD - 3) / 32 + 1);
        p[0] = (uint8_t)count, p[1] = (uint8_t)(rnd() % 600 == 0 ? 1 : 0), p[2] = (uint8_t)(rnd() % 8 ? 16 : rnd());
        for (k = 0; k < count * 16; k++) {
            uint16_t t = (uint16_t)(rnd() % 8 ? rnd() % 257 : rnd());
            p[3 + 2 * k] = (uint8_t)t, p[4 + 2 * k] = (uint8_t)(t >> 8);
        }
        len = 3 + 2 * count * 16;
        break;
    case 0x10:
        count = rnd() % 130;
        p[0] = (uint8_t)count, p[1] = 0;
        for (k = 0; k < 2 * count; k++)
            p[2 + k] = (uint8_t)(rnd() % 18);
        len = 2 + 2 * count;
        break;
    case 0x05: case 0x31:
        len = cmd == 0x05 ? 26 : 88;
        for (k = 0; k + 8 <= len; k += 8)
            put_double(p + k);
        if (cmd == 0x05)
            put_double(p + 18), p[16] = (uint8_t)(rnd() % 18), p[17] = (uint8_t)(rnd() % 18);
        break;
    case 0x12: p[0] = (uint8_t)rnd(), p[1] = (uint8_t)rnd(); len = 2; break;
    default:
        len = rnd() % 8 ? 0 : rnd() % 300;
        for (k = 0; k < len; k++)
            p[k] = (uint8_t)rnd();
    }
    if (rnd() % 10 == 0 && len > 0)
        len -= 1 + rnd() % len; /* a payload cut short */
    raw[0] = (uint8_t)(rnd() % 50 ? 1 : rnd());
    raw[1] = (uint8_t)rnd(), raw[2] = (uint8_t)(rnd() % 4); /* few sequence numbers: replays */
    raw[3] = cmd, raw[4] = 0, raw[5] = (uint8_t)len, raw[6] = (uint8_t)(len >> 8);
    {
        uint32_t c = lkb_crc32(raw, 7 + len);
        raw[7 + len] = (uint8_t)c, raw[8 + len] = (uint8_t)(c >> 8);
        raw[9 + len] = (uint8_t)(c >> 16), raw[10 + len] = (uint8_t)(c >> 24);
    }
    return len + 11;
}

int main(int argc, char **argv)
{
    static uint8_t raw[LKB_RAW_MAX + 64], wire[2 * LKB_WIRE_MAX + 64];
    unsigned long frames = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000ul, f, hangs = 0;
    uint32_t now = 0;
    double worst = 0;
    rng_state ^= argc > 2 ? strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull : 0;
    lkb_model_reset(7);
    lkb_init(&board, now, 1000);
    for (f = 0; f < frames; f++) {
        size_t n = 0, k, at;
        uint32_t kind = rnd() % 10;
        clock_t t0;
        double dt;
        if (kind < 2) { /* random bytes, sometimes with delimiters */
            n = rnd() % 300;
            for (k = 0; k < n; k++)
                wire[k] = (uint8_t)(rnd() % 16 ? rnd() : 0);
        } else if (kind < 3) { /* a run longer than any frame */
            n = LKB_WIRE_MAX + rnd() % 300;
            for (k = 0; k < n; k++)
                wire[k] = (uint8_t)(rnd() | 1);
            wire[n++] = 0;
        } else {
            size_t len = valid_request(raw);
            if (kind == 8) /* flipped bytes, then CRC or COBS no longer fit */
                for (k = 0, at = 1 + rnd() % 3; k < at; k++)
                    raw[rnd() % len] ^= (uint8_t)(1 + rnd() % 255);
            n = stuff(raw, len, wire);
            if (kind == 9) /* a stuffed frame with a flipped code byte or cut */
                wire[rnd() % n] ^= (uint8_t)(1 + rnd() % 255);
        }
        t0 = clock();
        for (at = 0; at < n;) { /* in random chunks, as a UART delivers them */
            size_t chunk = 1 + rnd() % (n - at < 64 ? n - at : 64);
            if (rnd() % 3 == 0)
                chunk = n - at;
            lkb_rx(&board, wire + at, chunk, now);
            at += chunk;
        }
        now += rnd() % 50; /* ms: the arm watchdog runs too */
        lkb_tick(&board, now);
        dt = (double)(clock() - t0) / CLOCKS_PER_SEC;
        if (dt > worst)
            worst = dt;
        if (dt > 0.1)
            hangs++;
    }
    printf("fuzz: %lu inputs, 0 crashes (sanitizers armed), %lu hangs (> 100 ms, worst %.3f ms), %lu replies, "
           "%lu malformed replies, %lu overlong replies, %lu pulses applied, %lu pulses without HV, "
           "%lu program / %lu erase pulses counted in the last boot\n",
           frames, hangs, worst * 1e3, replies, bad_replies, reply_overflow, lkb_model_state.pulses_applied,
           lkb_model_state.pulses_without_hv, (unsigned long)board.program_pulses, (unsigned long)board.erase_pulses);
    return (hangs || bad_replies || reply_overflow || lkb_model_state.pulses_without_hv) ? 1 : 0;
}
