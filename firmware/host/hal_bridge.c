/* Host HAL that bridges to the emulated chip: every hardware call becomes one text line
 * on a socket to simulator/hal_bridge.py, which applies it to an EmulatedArray. The
 * protocol core is the same object file that runs on an MCU; only this layer differs.
 *
 * Lines (numbers as %.17g, exact round trips):
 *   C                          -> geometry, datasheet, limits, settings, capabilities; then 3 text lines
 *   K T V input_bits tdc_bits lsb -> 0 | 1      configure
 *   R row col                  -> amps          cell read
 *   P row col V s              -> 0 | 1         one program pulse
 *   E row V s                  -> 0 | 1         one row erase pulse
 *   V tick_s t0 .. t(rows-1)   -> c0 .. c(cols-1)
 *   S row col                  -> 0             SMU route (-1 -1: open)
 *   T                          -> kelvin | nan
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hal_model.h"

static int fd = -1;
static lkb_config config;
static char names[3][256];
static int hv, sel_row = -1, sel_col = -1;
static double program_v, erase_v;
static char line[8192];
static char inbuf[8192];
static size_t in_len;
static uint32_t entropy;

static int send_line(const char *text)
{
    size_t n = strlen(text);
    while (n) {
        ssize_t k = write(fd, text, n);
        if (k <= 0)
            return -1;
        text += k;
        n -= (size_t)k;
    }
    return 0;
}

static char *get_line(void)
{
    for (;;) {
        char *nl = memchr(inbuf, '\n', in_len);
        if (nl) {
            size_t n = (size_t)(nl - inbuf);
            memcpy(line, inbuf, n);
            line[n] = 0;
            memmove(inbuf, nl + 1, in_len - n - 1);
            in_len -= n + 1;
            return line;
        } else {
            ssize_t k;
            if (in_len == sizeof inbuf)
                return NULL;
            k = read(fd, inbuf + in_len, sizeof inbuf - in_len);
            if (k <= 0)
                return NULL;
            in_len += (size_t)k;
        }
    }
}

static char *ask(const char *request)
{
    if (send_line(request))
        return NULL;
    return get_line();
}

static int ask_status(const char *request)
{
    char *r = ask(request);
    return r == NULL || strcmp(r, "0") != 0;
}

int lkb_host_start(unsigned long seed, int bridge_fd)
{
    char *r, *p;
    double v[64];
    int n = 0, k;
    fd = bridge_fd;
    entropy = (uint32_t)seed * 2654435761u + 1u;
    if (fd < 0 || !(r = ask("C\n")))
        return -1;
    for (p = r; n < 64;) {
        char *end;
        v[n] = strtod(p, &end);
        if (end == p)
            break;
        n++, p = end;
    }
    if (n < 3 || n < 3 + 2 * (int)v[2] + 7 + 11 + 5 + 2)
        return -1;
    config.rows = (uint8_t)v[0], config.cols = (uint8_t)v[1], config.npairs = (uint8_t)v[2];
    if (config.rows > LKB_MAX_ROWS || config.cols > LKB_MAX_COLS || config.npairs > LKB_MAX_COLS)
        return -1;
    for (k = 0; k < config.npairs; k++)
        config.pairs[k][0] = (uint8_t)v[3 + 2 * k], config.pairs[k][1] = (uint8_t)v[4 + 2 * k];
    k = 3 + 2 * config.npairs;
    config.datasheet.precharge_v = v[k++];
    config.datasheet.threshold_v = v[k++];
    config.datasheet.bitline_capacitance_f = v[k++];
    config.datasheet.reference_current_a = v[k++];
    config.datasheet.cell_current_lo_a = v[k++];
    config.datasheet.cell_current_hi_a = v[k++];
    config.datasheet.erased_current_a = v[k++];
    config.hard_limits.max_program_v = v[k++];
    config.hard_limits.max_erase_v = v[k++];
    config.hard_limits.program_width_s[0] = v[k++], config.hard_limits.program_width_s[1] = v[k++];
    config.hard_limits.erase_width_s[0] = v[k++], config.hard_limits.erase_width_s[1] = v[k++];
    config.hard_limits.read_v[0] = v[k++], config.hard_limits.read_v[1] = v[k++];
    config.hard_limits.integration_s[0] = v[k++], config.hard_limits.integration_s[1] = v[k++];
    config.hard_limits.max_compliance_a = v[k++];
    config.default_settings.integration_s = v[k++];
    config.default_settings.read_v = v[k++];
    config.default_settings.input_bits = (uint8_t)v[k++];
    config.default_settings.tdc_bits = (uint8_t)v[k++];
    config.default_settings.tdc_lsb_s = v[k++];
    config.has_temperature = v[k++] != 0;
    config.has_smu_route = v[k++] != 0;
    for (k = 0; k < 3; k++) {
        if (!(r = get_line()))
            return -1;
        strncpy(names[k], r, sizeof names[k] - 1);
    }
    config.firmware = names[0], config.board_serial = names[1], config.chip_id = names[2];
    return 0;
}

const lkb_config *lkb_hal_config(void) { return &config; }

uint32_t lkb_hal_entropy(void)
{
    entropy ^= entropy << 13;
    entropy ^= entropy >> 17;
    entropy ^= entropy << 5;
    return entropy;
}

int lkb_hal_hv_enable(int on)
{
    hv = on != 0;
    return 0;
}

int lkb_hal_dac_set(enum lkb_dac dac, double volts)
{
    if (dac == LKB_DAC_PROGRAM)
        program_v = volts;
    else if (dac == LKB_DAC_ERASE)
        erase_v = volts;
    return 0; /* the read level travels with K (configure) */
}

int lkb_hal_select(int row, int col)
{
    sel_row = row, sel_col = col;
    return 0;
}

int lkb_hal_pulse(enum lkb_pulse kind, double width_s)
{
    char req[160];
    if (!hv || sel_row < 0)
        return 1;
    if (kind == LKB_PULSE_PROGRAM)
        snprintf(req, sizeof req, "P %d %d %.17g %.17g\n", sel_row, sel_col, program_v, width_s);
    else
        snprintf(req, sizeof req, "E %d %.17g %.17g\n", sel_row, erase_v, width_s);
    return ask_status(req);
}

int lkb_hal_read_current(int row, int col, double *amps)
{
    char req[64], *r, *end;
    snprintf(req, sizeof req, "R %d %d\n", row, col);
    if (!(r = ask(req)))
        return 1;
    *amps = strtod(r, &end);
    return end == r;
}

int lkb_hal_configure(const lkb_settings *s)
{
    char req[200];
    if (fd < 0)
        return 0;
    snprintf(req, sizeof req, "K %.17g %.17g %d %d %.17g\n", s->integration_s, s->read_v, s->input_bits,
             s->tdc_bits, s->tdc_lsb_s);
    return ask_status(req);
}

int lkb_hal_vmm(const uint16_t *ticks, double tick_s, uint16_t *counts)
{
    char req[512], *r, *end;
    size_t pos;
    int k;
    pos = (size_t)snprintf(req, sizeof req, "V %.17g", tick_s);
    for (k = 0; k < config.rows; k++)
        pos += (size_t)snprintf(req + pos, sizeof req - pos, " %u", (unsigned)ticks[k]);
    snprintf(req + pos, sizeof req - pos, "\n");
    if (!(r = ask(req)))
        return 1;
    for (k = 0; k < config.cols; k++) {
        unsigned long c = strtoul(r, &end, 10);
        if (end == r || c > 0xFFFFu)
            return 1;
        counts[k] = (uint16_t)c;
        r = end;
    }
    return 0;
}

int lkb_hal_route_smu(int row, int col)
{
    char req[64];
    if (fd < 0)
        return 0;
    snprintf(req, sizeof req, "S %d %d\n", row, col);
    return ask_status(req);
}

double lkb_hal_temperature_k(void)
{
    char *r = ask("T\n");
    return r ? strtod(r, NULL) : 0.0 / 0.0;
}
