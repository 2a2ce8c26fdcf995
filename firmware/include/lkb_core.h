/* labkit test board: protocol core (codec, CRC, dispatcher, replay cache, limits).
 * No dynamic allocation; all state lives in one lkb_board the caller owns. */
#ifndef LKB_CORE_H
#define LKB_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "lkb_hal.h"

#ifndef LKB_MAX_PAYLOAD
#define LKB_MAX_PAYLOAD 1024 /* bytes; HELLO announces it */
#endif
#ifndef LKB_REPLAY_SLOTS
#define LKB_REPLAY_SLOTS 8   /* PROGRAM/ERASE replies kept for replay */
#endif
#define LKB_PROTOCOL_VERSION 1
#define LKB_OVERHEAD 11 /* header 7 + CRC 4 */
#define LKB_RAW_MAX (LKB_MAX_PAYLOAD + LKB_OVERHEAD)
#define LKB_WIRE_MAX (LKB_RAW_MAX + LKB_RAW_MAX / 254 + 1)

enum lkb_status {
    LKB_OK = 0, LKB_BAD_CRC, LKB_BAD_FRAME, LKB_BAD_VERSION, LKB_UNKNOWN_COMMAND,
    LKB_BAD_ARGUMENT, LKB_OUT_OF_RANGE, LKB_NOT_ARMED, LKB_BUSY, LKB_HARDWARE_FAULT
};

typedef struct {
    uint16_t seq;
    uint8_t cmd, status, used;
    uint32_t crc;       /* CRC-32 of the request (header and payload) */
    uint8_t payload[6]; /* u16 applied, u32 total */
} lkb_replay;

typedef struct {
    uint8_t rx[LKB_WIRE_MAX];  /* stuffed bytes of the frame being received */
    size_t rx_len;
    int rx_overflow;           /* discarding until the next delimiter */
    uint8_t tx[LKB_RAW_MAX];   /* raw reply being built */
    lkb_replay replay[LKB_REPLAY_SLOTS];
    unsigned replay_next;
    lkb_limits limits;         /* current limits (hard limits tightened by SET_LIMITS) */
    lkb_settings settings;
    uint32_t boot_id, program_pulses, erase_pulses, frames, crc_errors;
    uint32_t boot_ms, last_rx_ms, now_ms, arm_timeout_ms;
    int armed;
    int reboot_pending;
} lkb_board;

void lkb_init(lkb_board *b, uint32_t now_ms, uint32_t arm_timeout_ms);
void lkb_rx(lkb_board *b, const uint8_t *data, size_t n, uint32_t now_ms); /* replies via lkb_hal_write */
void lkb_tick(lkb_board *b, uint32_t now_ms); /* call often: the arm watchdog */

uint32_t lkb_crc32(const uint8_t *data, size_t n);
int lkb_cobs_decode(uint8_t *buf, size_t n, size_t *out); /* in place; -1 on malformed input */

#endif
