/*
 * NIC register map: the one source of truth for BAR0 offsets and bit fields.
 * Included inside module bodies (localparams); the host reads it with pyverilog
 * (host/regmap.py), so drivers and testbenches use these names, never offsets.
 * All registers are 32 bits wide and DWORD aligned.
 */

// identification and global control
localparam REG_ID              = 16'h0000; // RO  device id, reads NIC_ID_VALUE
localparam REG_VERSION         = 16'h0004; // RO  [15:0] minor, [31:16] major
localparam REG_CTRL            = 16'h0008; // RW  global control, CTRL_* bits
localparam REG_STATUS          = 16'h000C; // RO  global status, STATUS_* bits
localparam REG_IRQ_ENABLE      = 16'h0010; // RW  interrupt causes enabled, IRQ_* bits
localparam REG_IRQ_STATUS      = 16'h0014; // RW1C interrupt causes seen, IRQ_* bits
localparam REG_IRQ_COAL_COUNT  = 16'h0018; // RW  fire after this many events (0 and 1: every event)
localparam REG_IRQ_COAL_TIMER  = 16'h001C; // RW  or this many cycles after the first pending event (0: off)
localparam REG_CPL_TIMEOUT     = 16'h0020; // RW  DMA read completion timeout in user_clk cycles
localparam REG_SCRATCH         = 16'h0024; // RW  scratch register (byte enables honoured)
localparam REG_LINK_PARAMS     = 16'h0028; // RO  [2:0] MPS code, [6:4] MRRS code, [8] RCB 128 B, [11:9] data width/64 - 1 code
localparam REG_DMA_TAGS        = 16'h002C; // RO  [8:0] tags in flight, [17:9] quarantined tags, [26:18] tags in use (32, or 256 with extended tags)
localparam REG_DEV_CTL         = 16'h0030; // RO  Device Control as the device read it from its config space, DEVCTL_* bits
localparam REG_DMA_CREDITS     = 16'h0034; // RW  completion-buffer limits for reads: [8:0] CplH credits, [27:16] CplD credits (16 B)
localparam REG_DMA_CREDITS_USED = 16'h0038; // RO  completion credits reserved by outstanding reads: [8:0] CplH, [27:16] CplD
localparam REG_TAG_HOLD        = 16'h003C; // RW  cycles a timed-out tag stays quarantined before a queue reset may free it

// TX queue (descriptor ring + completion ring in host memory)
localparam REG_TXQ_BASE_LO     = 16'h0100; // RW  descriptor ring base, 16 B aligned
localparam REG_TXQ_BASE_HI     = 16'h0104; // RW
localparam REG_TXQ_SIZE        = 16'h0108; // RW  entries; power of two in [2, QUEUE_MAX_SIZE] or QSTAT_SIZE_ERR
localparam REG_TXQ_PROD        = 16'h010C; // RW  producer index (doorbell), written by the host
localparam REG_TXQ_CONS        = 16'h0110; // RO  consumer index, advanced by the device
localparam REG_TXQ_CPL_BASE_LO = 16'h0114; // RW  completion ring base, 16 B aligned
localparam REG_TXQ_CPL_BASE_HI = 16'h0118; // RW
localparam REG_TXQ_CTRL        = 16'h011C; // RW  QCTRL_* bits
localparam REG_TXQ_STATUS      = 16'h0120; // RO  QSTAT_* bits

// RX queue (same layout as the TX queue)
localparam REG_RXQ_BASE_LO     = 16'h0200;
localparam REG_RXQ_BASE_HI     = 16'h0204;
localparam REG_RXQ_SIZE        = 16'h0208;
localparam REG_RXQ_PROD        = 16'h020C;
localparam REG_RXQ_CONS        = 16'h0210;
localparam REG_RXQ_CPL_BASE_LO = 16'h0214;
localparam REG_RXQ_CPL_BASE_HI = 16'h0218;
localparam REG_RXQ_CTRL        = 16'h021C;
localparam REG_RXQ_STATUS      = 16'h0220;

// statistics counters (RO, 32 bit, wrap)
localparam REG_STAT_TX_PKTS       = 16'h0400; // frames sent on the MAC side
localparam REG_STAT_TX_BYTES      = 16'h0404;
localparam REG_STAT_RX_PKTS       = 16'h0408; // frames delivered to host buffers
localparam REG_STAT_RX_BYTES      = 16'h040C;
localparam REG_STAT_TLP_MEM_RD    = 16'h0410; // memory read requests issued on RQ
localparam REG_STAT_TLP_MEM_WR    = 16'h0414; // memory write requests issued on RQ (MSI-X included)
localparam REG_STAT_TLP_CPL_TX    = 16'h0418; // completions sent on CC
localparam REG_STAT_TLP_REQ_RX    = 16'h041C; // requests received on CQ
localparam REG_STAT_TLP_CPL_RX    = 16'h0420; // completions received on RC
localparam REG_STAT_DMA_ERRORS    = 16'h0424; // DMA reads ended by UR/CA/poison/timeout, bad descriptors
localparam REG_STAT_CPL_TIMEOUTS  = 16'h0428; // DMA reads whose completion never came in time
localparam REG_STAT_UNEXP_CPL     = 16'h042C; // completions for no outstanding request (dropped)
localparam REG_STAT_UR_SENT       = 16'h0430; // UR or CA completions sent
localparam REG_STAT_MMIO_UNMAPPED = 16'h0434; // accesses to unmapped BAR0 offsets (read as zero / ignored)
localparam REG_STAT_IRQS          = 16'h0438; // MSI-X messages written
localparam REG_STAT_RX_TRUNC      = 16'h043C; // received frames cut to the buffer or frame store size
localparam REG_STAT_MMIO_DROPPED  = 16'h0440; // posted requests dropped (unsupported type or too long)
localparam REG_STAT_TAG_EXHAUSTED = 16'h0444; // queue stops because its quarantined tags reached the limit
localparam REG_STAT_QUAR_RELEASED = 16'h0448; // quarantined tags freed (late completion, or queue reset after the hold time)
localparam REG_STAT_CREDIT_STALLS = 16'h044C; // cycles a read TLP waited for completion credits
localparam REG_STAT_TAG_STALLS    = 16'h0450; // cycles a read TLP waited for a free tag
localparam REG_STAT_RD_BYTES      = 16'h0454; // bytes requested by DMA reads
localparam REG_STAT_WR_BYTES      = 16'h0458; // payload bytes of DMA writes (MSI-X included)
localparam STAT_COUNT             = 23;

// MSI-X table and pending-bit array (BAR0)
localparam REG_MSIX_TABLE      = 16'h1000; // entry k at +16*k: addr lo, addr hi, data, vector control
localparam REG_MSIX_PBA        = 16'h1800; // bit k: vector k pending
localparam MSIX_VECTORS        = 1;

// values and bit fields
localparam NIC_ID_VALUE        = 32'h4E494331; // "NIC1"
localparam NIC_VERSION_VALUE   = 32'h00020000; // 2.0: pipelined DMA, extended tags, completion credits
localparam QUEUE_MAX_SIZE      = 32768;
localparam DESC_BYTES          = 16; // descriptor: [63:0] buffer address, [95:64] length, [127:96] flags
localparam CPL_BYTES           = 16; // completion: DW0 index|status<<16, DW1 length, DW2 0, DW3 valid<<31|phase
localparam MAX_FRAME_BYTES     = 16384;
localparam DESC_BATCH          = 8;     // descriptors fetched by one DMA read at most
localparam DESC_CACHE          = 16;    // descriptors a queue holds on chip (fetched, not yet used)
localparam TX_BUF_BYTES        = 65536; // TX packet buffer (frames whose data reads are in flight or done)
localparam TX_FRAMES_IN_FLIGHT = 32;    // TX frames between data fetch and completion record
localparam RX_STORE_BYTES      = 32768; // RX frame store (frames received, not yet written to the host)
localparam RX_FRAMES_STORED    = 16;    // RX frames the store keeps at most
localparam TAG_TABLE_SIZE      = 256;   // read tags (8-bit extended tags; 32 when Extended Tag Field Enable is off)
localparam CPLH_LIMIT_DEFAULT  = 256;   // hard IP completion buffer (UltraScale+: 256 CplH, 32 KB CplD)
localparam CPLD_LIMIT_DEFAULT  = 2048;

localparam CTRL_LOOPBACK_BIT   = 0;  // TX frames return on RX instead of leaving on the MAC
localparam CTRL_RO_BIT         = 1;  // set Relaxed Ordering on packet data reads/writes (when Device Control allows)
localparam CTRL_NS_BIT         = 2;  // set No Snoop on packet data reads/writes (when Device Control allows)

localparam DEVCTL_EXT_TAG_BIT  = 0;  // Extended Tag Field Enable (8-bit tags)
localparam DEVCTL_RO_BIT       = 1;  // Enable Relaxed Ordering
localparam DEVCTL_NS_BIT       = 2;  // Enable No Snoop

localparam STATUS_BUS_MASTER_BIT = 0;
localparam STATUS_MSIX_EN_BIT    = 1;
localparam STATUS_TXQ_ERR_BIT    = 2;
localparam STATUS_RXQ_ERR_BIT    = 3;

localparam IRQ_TX_BIT          = 0;  // a TX completion was written
localparam IRQ_RX_BIT          = 1;  // an RX completion was written
localparam IRQ_ERR_BIT         = 2;  // a queue stopped with an error

localparam QCTRL_ENABLE_BIT    = 0;  // 1: run; 0: stop and reset indices and error bits

localparam QSTAT_ACTIVE_BIT    = 0;  // enabled and not stopped by an error
localparam QSTAT_SIZE_ERR_BIT  = 1;  // SIZE is not a power of two in range: cannot enable
localparam QSTAT_DMA_ERR_BIT   = 2;  // a DMA read ended with UR/CA/poison
localparam QSTAT_TIMEOUT_BIT   = 3;  // a DMA read timed out
localparam QSTAT_DESC_ERR_BIT  = 4;  // a descriptor was malformed (length, alignment)
localparam QSTAT_QUAR_BIT      = 5;  // the queue's timed-out reads hold the quarantine limit of tags: stopped
localparam QSTAT_DRAIN_BIT     = 6;  // stopped or disabled, waiting for its outstanding DMA to finish

localparam CPL_STATUS_OK       = 0;
localparam CPL_STATUS_TRUNC    = 1;  // RX frame longer than the buffer: cut
