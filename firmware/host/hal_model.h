/* The host build's chip model (host/hal_model.c): state visible to the host programs. */
#ifndef LKB_HAL_MODEL_H
#define LKB_HAL_MODEL_H

#include "lkb_hal.h"

typedef struct {
    double current_a[16][16];
    int hv, row, col, smu_row, smu_col;
    double program_v, erase_v, read_v;
    unsigned long pulses_applied, pulses_without_hv;
    lkb_settings settings;
    uint32_t rng;
} lkb_model;

extern lkb_model lkb_model_state;
void lkb_model_reset(uint32_t seed);

/* Start the host HAL (hal_model.c: the chip model, seeded; hal_bridge.c: the emulated
 * chip across the socket bridge_fd). 0 on success. */
int lkb_host_start(unsigned long seed, int bridge_fd);

#endif
