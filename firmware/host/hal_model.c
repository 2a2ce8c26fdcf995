/* Host HAL: a simple 16x16 floating-gate chip model behind the lkb_hal.h interface.
 * Cell currents (A) at the nominal read voltage; a program pulse lowers a cell's
 * current towards the window floor, an erase pulse restores the row to the erased
 * current; a VMM integrates cell currents over the input pulse widths and converts
 * the remaining bit-line charge into a comparator crossing time on the TDC. */
#include "hal_model.h"

#include <math.h>

#define MIRROR 0.01 /* bit-line current mirror: the share of the cell current that discharges the bit line */

static const lkb_config config = {
    "labkit-ref-fw 1.0.0 (host)", "REF-HOST-0001", "REF-CHIP-0001",
    16, 16, 8,
    {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}},
    {0.9, 0.5, 0.5e-12, 0.2e-6, 1e-9, 1e-6, 1e-6},
    {6.5, 14.0, {10e-9, 1e-3}, {1e-6, 0.1}, {0.0, 2.5}, {0.1e-6, 10e-6}, 10e-6},
    {1e-6, 1.8, 8, 10, 1.25e-9},
    1, 1,
};

lkb_model lkb_model_state;

const lkb_config *lkb_hal_config(void) { return &config; }

void lkb_model_reset(uint32_t seed)
{
    lkb_model *m = &lkb_model_state;
    int r, c;
    m->rng = seed ? seed : 1u;
    for (r = 0; r < 16; r++)
        for (c = 0; c < 16; c++)
            m->current_a[r][c] = 1e-9 * pow(10.0, 3.0 * (double)((r * 16 + c) * 37 % 256) / 255.0);
    m->hv = 0;
    m->row = m->col = m->smu_row = m->smu_col = -1;
    m->program_v = m->erase_v = 0;
    m->read_v = 1.8;
    m->pulses_applied = m->pulses_without_hv = 0;
    m->settings = config.default_settings;
}

int lkb_host_start(unsigned long seed, int bridge_fd)
{
    (void)bridge_fd;
    lkb_model_reset((uint32_t)seed);
    return 0;
}

uint32_t lkb_hal_entropy(void)
{
    uint32_t x = lkb_model_state.rng; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return lkb_model_state.rng = x;
}

int lkb_hal_hv_enable(int on)
{
    lkb_model_state.hv = on != 0;
    return 0;
}

int lkb_hal_dac_set(enum lkb_dac dac, double volts)
{
    lkb_model *m = &lkb_model_state;
    if (dac == LKB_DAC_READ)
        m->read_v = volts;
    else if (dac == LKB_DAC_PROGRAM)
        m->program_v = volts;
    else
        m->erase_v = volts;
    return 0;
}

int lkb_hal_select(int row, int col)
{
    lkb_model_state.row = row;
    lkb_model_state.col = col;
    return 0;
}

int lkb_hal_pulse(enum lkb_pulse kind, double width_s)
{
    lkb_model *m = &lkb_model_state;
    int c;
    if (!m->hv) {
        m->pulses_without_hv++; /* the core must never let this happen */
        return 1;
    }
    if (m->row < 0 || m->row >= 16)
        return 1;
    m->pulses_applied++;
    if (kind == LKB_PULSE_ERASE) {
        for (c = 0; c < 16; c++)
            m->current_a[m->row][c] = config.datasheet.erased_current_a;
    } else if (m->col >= 0 && m->col < 16) {
        double rate = 0.3 * (width_s / 1e-6) * exp((m->program_v - 5.5) / 0.4);
        double lo = config.datasheet.cell_current_lo_a;
        double *i = &m->current_a[m->row][m->col];
        *i = lo + (*i - lo) * exp(-(rate > 50 ? 50 : rate));
    }
    return 0;
}

int lkb_hal_read_current(int row, int col, double *amps)
{
    lkb_model *m = &lkb_model_state;
    *amps = m->current_a[row][col] * (m->read_v / 1.8);
    return 0;
}

int lkb_hal_configure(const lkb_settings *s)
{
    lkb_model_state.settings = *s;
    return 0;
}

int lkb_hal_vmm(const uint16_t *ticks, double tick_s, uint16_t *counts)
{
    lkb_model *m = &lkb_model_state;
    const lkb_datasheet *d = &config.datasheet;
    double full = d->bitline_capacitance_f * (d->precharge_v - d->threshold_v); /* C */
    double max_count = (double)((1u << m->settings.tdc_bits) - 1);
    int r, c;
    for (c = 0; c < 16; c++) {
        double q = 0, t, n;
        for (r = 0; r < 16; r++)
            q += (double)ticks[r] * tick_s * m->current_a[r][c] * (m->read_v / 1.8) * MIRROR;
        t = (full - q) / d->reference_current_a; /* s after the window: reference discharge */
        n = t <= 0 ? 0 : floor(t / m->settings.tdc_lsb_s + 0.5);
        counts[c] = (uint16_t)(n > max_count ? max_count : n);
    }
    return 0;
}

int lkb_hal_route_smu(int row, int col)
{
    lkb_model_state.smu_row = row;
    lkb_model_state.smu_col = col;
    return 0;
}

double lkb_hal_temperature_k(void) { return 300.0; }
