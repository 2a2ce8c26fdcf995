/* labkit test board: hardware-abstraction interface (portable C99).
 *
 * The protocol core (lkb_core.c) calls only these functions. A port to a board
 * implements them once over its DACs, pulse timers, decoders, TDC and UART; the
 * host build implements them over a small chip model (host/hal_model.c).
 * All analog values are SI: volts, seconds, amperes, kelvin. Every function
 * returning int returns 0 on success and non-zero on a hardware failure, which
 * the core reports as HARDWARE_FAULT.
 */
#ifndef LKB_HAL_H
#define LKB_HAL_H

#include <stddef.h>
#include <stdint.h>

#define LKB_MAX_ROWS 16
#define LKB_MAX_COLS 16

/* What the board knows about itself and its chip (constant after boot). */
typedef struct {
    double max_program_v, max_erase_v;          /* V */
    double program_width_s[2], erase_width_s[2]; /* s, [lo, hi] */
    double read_v[2];                            /* V, [lo, hi] */
    double integration_s[2];                     /* s, [lo, hi] */
    double max_compliance_a;                     /* A */
} lkb_limits;

typedef struct {
    double precharge_v, threshold_v, bitline_capacitance_f, reference_current_a;
    double cell_current_lo_a, cell_current_hi_a, erased_current_a;
} lkb_datasheet;

typedef struct {
    double integration_s; /* T: input pulse widths are ticks * T / 2**input_bits */
    double read_v;        /* word-line high level and read gate voltage */
    uint8_t input_bits;   /* 1..15 */
    uint8_t tdc_bits;     /* 1..16 */
    double tdc_lsb_s;     /* s per TDC count */
} lkb_settings;

typedef struct {
    const char *firmware, *board_serial, *chip_id; /* at most 255 bytes each */
    uint8_t rows, cols, npairs;
    uint8_t pairs[LKB_MAX_COLS][2];
    lkb_datasheet datasheet;
    lkb_limits hard_limits; /* what the hardware can never exceed */
    lkb_settings default_settings;
    int has_temperature;    /* a sensor on the chip socket */
    int has_smu_route;      /* an analog test port the SMU sits on */
} lkb_config;

enum lkb_dac { LKB_DAC_READ, LKB_DAC_PROGRAM, LKB_DAC_ERASE };
enum lkb_pulse { LKB_PULSE_PROGRAM, LKB_PULSE_ERASE };

const lkb_config *lkb_hal_config(void);
uint32_t lkb_hal_entropy(void);                        /* for the boot id */
void lkb_hal_write(const uint8_t *data, size_t n);    /* UART transmit (may block) */
int lkb_hal_hv_enable(int on);                         /* programming high voltage */
int lkb_hal_dac_set(enum lkb_dac dac, double volts);
int lkb_hal_select(int row, int col);                  /* -1: none (col -1 with a row: whole row) */
int lkb_hal_pulse(enum lkb_pulse kind, double width_s);/* on the selected lines; needs HV */
int lkb_hal_read_current(int row, int col, double *amps);
int lkb_hal_vmm(const uint16_t *ticks, double tick_s, uint16_t *counts); /* one vector: rows in, cols out */
int lkb_hal_configure(const lkb_settings *s);         /* integration window, TDC */
int lkb_hal_route_smu(int row, int col);               /* -1, -1: disconnect the test port */
double lkb_hal_temperature_k(void);                    /* NaN: no sensor */

#endif
