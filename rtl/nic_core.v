`resetall
`timescale 1ns / 1ps
`default_nettype none

// Registers carry declaration initial values so every simulator (Icarus starts at X) begins in a defined
// state before the first reset; the synchronous reset still clears every control register. Verilator's
// PROCASSINIT flags exactly this pattern, so it is waived for this file.
/* verilator lint_off PROCASSINIT */

/* NIC core: registers, TX/RX descriptor rings, packet buffers, MSI-X interrupts, statistics */
module nic_core #
(
    // DWORD lanes of the DMA RAM ports (PCIe data width / 32)
    parameter KEEP_WIDTH = 2,
    // PCIe user interface data width code reported in REG_LINK_PARAMS
    parameter DATA_WIDTH = KEEP_WIDTH*32,
    // register address width (bytes)
    parameter REG_ADDR_WIDTH = 16,
    // DWORD address width of the DMA read destination RAM (packet + descriptors)
    parameter RD_RAM_AW = 13,
    // DWORD address width of the RX frame store
    parameter WR_RAM_AW = 12,
    // default DMA read completion timeout in cycles (1 ms at 250 MHz)
    parameter CPL_TIMEOUT_DEFAULT = 250000
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* register bus (from nic_mmio) */
    input  wire                          reg_wr_en,
    input  wire [REG_ADDR_WIDTH-1:0]     reg_wr_addr,
    input  wire [31:0]                   reg_wr_data,
    input  wire [3:0]                    reg_wr_strb,
    input  wire                          reg_rd_en,
    input  wire [REG_ADDR_WIDTH-1:0]     reg_rd_addr,
    output reg  [31:0]                   reg_rd_data,

    /* configuration status */
    input  wire [1:0]                    cfg_max_payload,
    input  wire [2:0]                    cfg_max_read_req,
    input  wire                          cfg_rcb_128,
    input  wire                          cfg_bus_master,
    input  wire                          cfg_msix_enable,
    input  wire                          cfg_msix_mask,
    output wire [31:0]                   cpl_timeout,

    /* DMA read jobs: client 0 TX, client 1 RX */
    output reg  [1:0]                    rd_req_valid,
    input  wire [1:0]                    rd_req_ready,
    output reg  [2*64-1:0]               rd_req_addr,
    output reg  [2*16-1:0]               rd_req_len,
    output reg  [2*RD_RAM_AW-1:0]        rd_req_ram,
    input  wire [1:0]                    rd_done,
    input  wire [2*2-1:0]                rd_done_status,

    /* DMA read destination RAM write lanes */
    input  wire [KEEP_WIDTH-1:0]         ram_wr_en,
    input  wire [KEEP_WIDTH*RD_RAM_AW-1:0] ram_wr_addr,
    input  wire [KEEP_WIDTH*32-1:0]      ram_wr_data,

    /* DMA write jobs: client 0 TX completions, 1 RX data + completions, 2 MSI-X */
    output reg  [2:0]                    wr_req_valid,
    input  wire [2:0]                    wr_req_ready,
    output reg  [3*64-1:0]               wr_req_addr,
    output reg  [3*16-1:0]               wr_req_len,
    output reg  [2:0]                    wr_req_imm_en,
    output reg  [3*128-1:0]              wr_req_imm,
    output reg  [3*WR_RAM_AW-1:0]        wr_req_ram,
    input  wire [2:0]                    wr_done,

    /* RX frame store read lanes (DMA write source) */
    input  wire [KEEP_WIDTH*WR_RAM_AW-1:0] src_rd_addr,
    output reg  [KEEP_WIDTH*32-1:0]      src_rd_data,

    /* MAC TX (frames out) */
    output wire [63:0]                   m_axis_tx_tdata,
    output wire [7:0]                    m_axis_tx_tkeep,
    output wire                          m_axis_tx_tlast,
    output wire                          m_axis_tx_tvalid,
    input  wire                          m_axis_tx_tready,

    /* MAC RX (frames in) */
    input  wire [63:0]                   s_axis_rx_tdata,
    input  wire [7:0]                    s_axis_rx_tkeep,
    input  wire                          s_axis_rx_tlast,
    input  wire                          s_axis_rx_tvalid,
    output wire                          s_axis_rx_tready,

    /* statistics pulses from the PCIe side */
    input  wire                          stat_mem_rd,
    input  wire                          stat_mem_wr,
    input  wire                          stat_cpl_tx,
    input  wire                          stat_req_rx,
    input  wire                          stat_cpl_rx,
    input  wire                          stat_unexp_cpl,
    input  wire                          stat_timeout,
    input  wire                          stat_ur_sent,
    input  wire                          stat_mmio_dropped,
    input  wire [7:0]                    tags_in_flight,
    input  wire [7:0]                    tags_quarantined
);

`include "nic_regs.vh"

localparam [1:0] DONE_OK      = 2'd0;  // read job status from nic_dma (1: error completion)
localparam [1:0] DONE_TIMEOUT = 2'd2;

// layout of the read destination RAM (DWORD addresses)
localparam integer RAM_TX_DESC_DW = MAX_FRAME_BYTES/4;
localparam [RD_RAM_AW-1:0] RAM_TX_PKT  = {RD_RAM_AW{1'b0}};
localparam [RD_RAM_AW-1:0] RAM_TX_DESC = RAM_TX_DESC_DW[RD_RAM_AW-1:0];
localparam [RD_RAM_AW-1:0] RAM_RX_DESC = RAM_TX_DESC + {{(RD_RAM_AW-3){1'b0}}, 3'd4};

// statistics counter index of each REG_STAT_* register
localparam [4:0] ST_TX_PKTS = 5'd0, ST_TX_BYTES = 5'd1, ST_RX_PKTS = 5'd2, ST_RX_BYTES = 5'd3,
                 ST_TLP_MEM_RD = 5'd4, ST_TLP_MEM_WR = 5'd5, ST_TLP_CPL_TX = 5'd6, ST_TLP_REQ_RX = 5'd7,
                 ST_TLP_CPL_RX = 5'd8, ST_DMA_ERRORS = 5'd9, ST_CPL_TIMEOUTS = 5'd10, ST_UNEXP_CPL = 5'd11,
                 ST_UR_SENT = 5'd12, ST_MMIO_UNMAPPED = 5'd13, ST_IRQS = 5'd14, ST_RX_TRUNC = 5'd15,
                 ST_MMIO_DROPPED = 5'd16;
localparam RX_STORE_DW = 1 << WR_RAM_AW;

localparam [3:0] TX_IDLE = 4'd0, TX_DESC_REQ = 4'd1, TX_DESC_WAIT = 4'd2, TX_DATA_REQ = 4'd3,
                 TX_DATA_WAIT = 4'd4, TX_SEND = 4'd5, TX_CPL_REQ = 4'd6, TX_CPL_WAIT = 4'd7;
localparam [3:0] RX_RECV = 4'd0, RX_WAIT_RING = 4'd1, RX_DESC_REQ = 4'd2, RX_DESC_WAIT = 4'd3,
                 RX_DATA_REQ = 4'd4, RX_DATA_WAIT = 4'd5, RX_CPL_REQ = 4'd6, RX_CPL_WAIT = 4'd7;
localparam [1:0] IRQ_IDLE = 2'd0, IRQ_REQ = 2'd1, IRQ_WAIT = 2'd2;

initial begin
    if (STAT_COUNT != 17
            || (REG_STAT_TX_BYTES - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TX_BYTES}
            || (REG_STAT_RX_PKTS - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_RX_PKTS}
            || (REG_STAT_RX_BYTES - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_RX_BYTES}
            || (REG_STAT_TLP_MEM_RD - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TLP_MEM_RD}
            || (REG_STAT_TLP_MEM_WR - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TLP_MEM_WR}
            || (REG_STAT_TLP_CPL_TX - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TLP_CPL_TX}
            || (REG_STAT_TLP_REQ_RX - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TLP_REQ_RX}
            || (REG_STAT_TLP_CPL_RX - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_TLP_CPL_RX}
            || (REG_STAT_DMA_ERRORS - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_DMA_ERRORS}
            || (REG_STAT_CPL_TIMEOUTS - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_CPL_TIMEOUTS}
            || (REG_STAT_UNEXP_CPL - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_UNEXP_CPL}
            || (REG_STAT_UR_SENT - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_UR_SENT}
            || (REG_STAT_MMIO_UNMAPPED - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_MMIO_UNMAPPED}
            || (REG_STAT_IRQS - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_IRQS}
            || (REG_STAT_RX_TRUNC - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_RX_TRUNC}
            || (REG_STAT_MMIO_DROPPED - REG_STAT_TX_PKTS) / 4 != {11'd0, ST_MMIO_DROPPED}) begin
        $error("Error: statistics indices disagree with nic_regs.vh (instance %m)");
        $finish;
    end
    if (MSIX_VECTORS != 1) begin
        $error("Error: the core implements one MSI-X vector (instance %m)");
        $finish;
    end
    if ((1 << RD_RAM_AW) < MAX_FRAME_BYTES/4 + 8) begin
        $error("Error: RD_RAM_AW too small for MAX_FRAME_BYTES plus descriptors (instance %m)");
        $finish;
    end
end

integer i;

/* memories */
reg [31:0] rd_ram [0:(1<<RD_RAM_AW)-1];
reg [31:0] rx_ram [0:RX_STORE_DW-1];

initial begin
    for (i = 0; i < (1<<RD_RAM_AW); i = i + 1) rd_ram[i] = 32'd0;
    for (i = 0; i < RX_STORE_DW; i = i + 1) rx_ram[i] = 32'd0;
end

always @(posedge clk) begin
    for (i = 0; i < KEEP_WIDTH; i = i + 1) begin
        if (ram_wr_en[i]) begin
            rd_ram[ram_wr_addr[i*RD_RAM_AW +: RD_RAM_AW]] <= ram_wr_data[i*32 +: 32];
        end
    end
end

integer ci1;
always @* begin
    for (ci1 = 0; ci1 < KEEP_WIDTH; ci1 = ci1 + 1) begin
        src_rd_data[ci1*32 +: 32] = rx_ram[src_rd_addr[ci1*WR_RAM_AW +: WR_RAM_AW]];
    end
end

/* registers */
reg [31:0] ctrl_reg = 32'd0;
reg [31:0] irq_en_reg = 32'd0;
reg [31:0] irq_status_reg = 32'd0;
reg [31:0] coal_count_reg = 32'd0;
reg [31:0] coal_timer_reg = 32'd0;
reg [31:0] cpl_timeout_reg = CPL_TIMEOUT_DEFAULT;
reg [31:0] scratch_reg = 32'd0;

// queue 0 = TX, 1 = RX
reg [63:0] q_base_reg     [0:1];
reg [31:0] q_size_reg     [0:1];
reg [15:0] q_prod_reg     [0:1];
reg [15:0] q_cons_reg     [0:1];
reg [63:0] q_cpl_base_reg [0:1];
reg        q_enable_reg   [0:1];
reg        q_phase_reg    [0:1];
reg        q_dma_err_reg  [0:1];
reg        q_timeout_reg  [0:1];
reg        q_desc_err_reg [0:1];

reg [31:0] msix_addr_lo_reg = 32'd0;
reg [31:0] msix_addr_hi_reg = 32'd0;
reg [31:0] msix_data_reg = 32'd0;
reg [31:0] msix_ctrl_reg = 32'd1;  // vectors start masked (PCIe 6.8.2.9)
reg        msix_pending_reg = 1'b0;

reg [31:0] stat_reg [0:STAT_COUNT-1];

initial begin
    for (i = 0; i < 2; i = i + 1) begin
        q_base_reg[i] = 64'd0;
        q_size_reg[i] = 32'd0;
        q_prod_reg[i] = 16'd0;
        q_cons_reg[i] = 16'd0;
        q_cpl_base_reg[i] = 64'd0;
        q_enable_reg[i] = 1'b0;
        q_phase_reg[i] = 1'b0;
        q_dma_err_reg[i] = 1'b0;
        q_timeout_reg[i] = 1'b0;
        q_desc_err_reg[i] = 1'b0;
    end
    for (i = 0; i < STAT_COUNT; i = i + 1) stat_reg[i] = 32'd0;
    rd_req_valid = 2'b00;
    rd_req_addr = 128'd0;
    rd_req_len = 32'd0;
    rd_req_ram = {2*RD_RAM_AW{1'b0}};
    wr_req_valid = 3'b000;
    wr_req_addr = 192'd0;
    wr_req_len = 48'd0;
    wr_req_imm_en = 3'b000;
    wr_req_imm = 384'd0;
    wr_req_ram = {3*WR_RAM_AW{1'b0}};
end

assign cpl_timeout = cpl_timeout_reg;

function size_ok;
    input [31:0] size;
    begin
        size_ok = size >= 32'd2 && size <= QUEUE_MAX_SIZE && (size & (size - 32'd1)) == 32'd0;
    end
endfunction

function [15:0] index_write;  // producer index write: byte enables, then wrap to the ring size
    input [15:0] old;
    input [15:0] data;
    input [1:0] strb;
    input [15:0] mask;
    begin
        index_write = old;
        if (strb[0]) index_write[7:0] = data[7:0];
        if (strb[1]) index_write[15:8] = data[15:8];
        index_write = index_write & mask;
    end
endfunction

function [31:0] apply_strb;
    input [31:0] old;
    input [31:0] data;
    input [3:0] strb;
    integer b;
    begin
        apply_strb = old;
        for (b = 0; b < 4; b = b + 1) begin
            if (strb[b]) apply_strb[b*8 +: 8] = data[b*8 +: 8];
        end
    end
endfunction

wire       q_size_err [0:1];
wire       q_active   [0:1];
wire [15:0] q_mask    [0:1];
genvar g;
generate
    for (g = 0; g < 2; g = g + 1) begin : qstat
        assign q_size_err[g] = !size_ok(q_size_reg[g]);
        assign q_active[g] = q_enable_reg[g] && !q_size_err[g] && !q_dma_err_reg[g]
                             && !q_timeout_reg[g] && !q_desc_err_reg[g];
        assign q_mask[g] = q_size_reg[g][15:0] - 16'd1;
    end
endgenerate

function [31:0] q_status;
    input active, size_err, dma_err, timeout_err, desc_err;
    begin
        q_status = 32'd0;
        q_status[QSTAT_ACTIVE_BIT] = active;
        q_status[QSTAT_SIZE_ERR_BIT] = size_err;
        q_status[QSTAT_DMA_ERR_BIT] = dma_err;
        q_status[QSTAT_TIMEOUT_BIT] = timeout_err;
        q_status[QSTAT_DESC_ERR_BIT] = desc_err;
    end
endfunction

reg [31:0] status_word;
always @* begin
    status_word = 32'd0;
    status_word[STATUS_BUS_MASTER_BIT] = cfg_bus_master;
    status_word[STATUS_MSIX_EN_BIT] = cfg_msix_enable;
    status_word[STATUS_TXQ_ERR_BIT] = q_dma_err_reg[0] | q_timeout_reg[0] | q_desc_err_reg[0];
    status_word[STATUS_RXQ_ERR_BIT] = q_dma_err_reg[1] | q_timeout_reg[1] | q_desc_err_reg[1];
end
wire [2:0]  dw_code = DATA_WIDTH == 64 ? 3'd0 : DATA_WIDTH == 128 ? 3'd1 : 3'd3;

/* register read mux */
wire [15:0] stat_off = (reg_rd_addr & 16'hfffc) - REG_STAT_TX_PKTS;
reg rd_mapped;
always @* begin
    reg_rd_data = 32'd0;
    rd_mapped = 1'b1;
    case (reg_rd_addr & 16'hfffc)
        REG_ID:              reg_rd_data = NIC_ID_VALUE;
        REG_VERSION:         reg_rd_data = NIC_VERSION_VALUE;
        REG_CTRL:            reg_rd_data = ctrl_reg;
        REG_STATUS:          reg_rd_data = status_word;
        REG_IRQ_ENABLE:      reg_rd_data = irq_en_reg;
        REG_IRQ_STATUS:      reg_rd_data = irq_status_reg;
        REG_IRQ_COAL_COUNT:  reg_rd_data = coal_count_reg;
        REG_IRQ_COAL_TIMER:  reg_rd_data = coal_timer_reg;
        REG_CPL_TIMEOUT:     reg_rd_data = cpl_timeout_reg;
        REG_SCRATCH:         reg_rd_data = scratch_reg;
        REG_LINK_PARAMS:     reg_rd_data = {20'd0, dw_code, cfg_rcb_128, 1'b0, cfg_max_read_req, 1'b0, 1'b0, cfg_max_payload};
        REG_DMA_TAGS:        reg_rd_data = {8'd0, 8'd32, tags_quarantined, tags_in_flight};
        REG_TXQ_BASE_LO:     reg_rd_data = q_base_reg[0][31:0];
        REG_TXQ_BASE_HI:     reg_rd_data = q_base_reg[0][63:32];
        REG_TXQ_SIZE:        reg_rd_data = q_size_reg[0];
        REG_TXQ_PROD:        reg_rd_data = {16'd0, q_prod_reg[0]};
        REG_TXQ_CONS:        reg_rd_data = {16'd0, q_cons_reg[0]};
        REG_TXQ_CPL_BASE_LO: reg_rd_data = q_cpl_base_reg[0][31:0];
        REG_TXQ_CPL_BASE_HI: reg_rd_data = q_cpl_base_reg[0][63:32];
        REG_TXQ_CTRL:        reg_rd_data = {31'd0, q_enable_reg[0]};
        REG_TXQ_STATUS:      reg_rd_data = q_status(q_active[0], q_size_err[0], q_dma_err_reg[0], q_timeout_reg[0], q_desc_err_reg[0]);
        REG_RXQ_BASE_LO:     reg_rd_data = q_base_reg[1][31:0];
        REG_RXQ_BASE_HI:     reg_rd_data = q_base_reg[1][63:32];
        REG_RXQ_SIZE:        reg_rd_data = q_size_reg[1];
        REG_RXQ_PROD:        reg_rd_data = {16'd0, q_prod_reg[1]};
        REG_RXQ_CONS:        reg_rd_data = {16'd0, q_cons_reg[1]};
        REG_RXQ_CPL_BASE_LO: reg_rd_data = q_cpl_base_reg[1][31:0];
        REG_RXQ_CPL_BASE_HI: reg_rd_data = q_cpl_base_reg[1][63:32];
        REG_RXQ_CTRL:        reg_rd_data = {31'd0, q_enable_reg[1]};
        REG_RXQ_STATUS:      reg_rd_data = q_status(q_active[1], q_size_err[1], q_dma_err_reg[1], q_timeout_reg[1], q_desc_err_reg[1]);
        REG_MSIX_TABLE:      reg_rd_data = msix_addr_lo_reg;
        REG_MSIX_TABLE + 4:  reg_rd_data = msix_addr_hi_reg;
        REG_MSIX_TABLE + 8:  reg_rd_data = msix_data_reg;
        REG_MSIX_TABLE + 12: reg_rd_data = msix_ctrl_reg;
        REG_MSIX_PBA:        reg_rd_data = {31'd0, msix_pending_reg};
        default: begin
            if ((reg_rd_addr & 16'hfffc) >= REG_STAT_TX_PKTS && (reg_rd_addr & 16'hfffc) < REG_STAT_TX_PKTS + STAT_COUNT*4) begin
                reg_rd_data = stat_reg[stat_off[6:2]];
            end else begin
                rd_mapped = 1'b0;  // unmapped: reads as zero
            end
        end
    endcase
end

/* TX engine */
reg [3:0]  tx_state_reg = TX_IDLE;
reg [63:0] tx_buf_addr_reg = 64'd0;
reg [15:0] tx_len_reg = 16'd0;
reg [15:0] tx_ptr_reg = 16'd0;   // bytes sent

// MAC-side TX stream from the packet buffer, 8 bytes a beat
wire [15:0] tx_rem = tx_len_reg - tx_ptr_reg;
wire [RD_RAM_AW-1:0] tx_dw = RAM_TX_PKT + tx_ptr_reg[RD_RAM_AW+1:2];
wire        tx_out_valid = tx_state_reg == TX_SEND;
wire [63:0] tx_out_data = {rd_ram[tx_dw + 1'b1], rd_ram[tx_dw]};
wire [7:0]  tx_out_keep = tx_rem >= 16'd8 ? 8'hff : (8'hff >> (4'd8 - tx_rem[3:0]));
wire        tx_out_last = tx_rem <= 16'd8;
wire        tx_out_ready;

wire loopback = ctrl_reg[CTRL_LOOPBACK_BIT];
assign m_axis_tx_tdata = tx_out_data;
assign m_axis_tx_tkeep = tx_out_keep;
assign m_axis_tx_tlast = tx_out_last;
assign m_axis_tx_tvalid = tx_out_valid && !loopback;
assign tx_out_ready = loopback ? rx_in_ready : m_axis_tx_tready;

/* RX engine input (MAC or loopback) */
wire        rx_in_valid = loopback ? tx_out_valid : s_axis_rx_tvalid;
wire [63:0] rx_in_data  = loopback ? tx_out_data : s_axis_rx_tdata;
wire [7:0]  rx_in_keep  = loopback ? tx_out_keep : s_axis_rx_tkeep;
wire        rx_in_last  = loopback ? tx_out_last : s_axis_rx_tlast;
wire        rx_in_ready;
assign s_axis_rx_tready = rx_in_ready && !loopback;

reg [3:0]  rx_state_reg = RX_RECV;
reg [15:0] rx_len_reg = 16'd0;     // frame bytes stored
reg        rx_trunc_reg = 1'b0;    // frame longer than the store
reg [63:0] rx_buf_addr_reg = 64'd0;
reg [15:0] rx_dma_len_reg = 16'd0;
assign rx_in_ready = rx_state_reg == RX_RECV;

function [3:0] popcount8;
    input [7:0] v;
    integer b;
    begin
        popcount8 = 4'd0;
        for (b = 0; b < 8; b = b + 1) popcount8 = popcount8 + {3'd0, v[b]};
    end
endfunction

wire [31:0] frame_max = MAX_FRAME_BYTES;

/* descriptor fields (valid after the descriptor read completes) */
wire [63:0] tx_desc_addr = {rd_ram[RAM_TX_DESC + 1], rd_ram[RAM_TX_DESC]};
wire [31:0] tx_desc_len  = rd_ram[RAM_TX_DESC + 2];
wire [63:0] rx_desc_addr = {rd_ram[RAM_RX_DESC + 1], rd_ram[RAM_RX_DESC]};
wire [31:0] rx_desc_len  = rd_ram[RAM_RX_DESC + 2];

/* interrupts */
reg [1:0]  irq_state_reg = IRQ_IDLE;
reg [31:0] irq_pending_reg = 32'd0;   // coalesced events not yet signalled
reg [31:0] irq_timer_reg = 32'd0;
wire [31:0] coal_count = coal_count_reg == 32'd0 ? 32'd1 : coal_count_reg;
wire irq_due = irq_pending_reg != 32'd0 && (irq_pending_reg >= coal_count
               || (coal_timer_reg != 32'd0 && irq_timer_reg >= coal_timer_reg));
wire irq_can_send = cfg_msix_enable && !cfg_msix_mask && !msix_ctrl_reg[0];

reg [2:0]  ev;            // events this cycle: TX, RX, ERR
reg [15:0] q_next_cons;
reg        stat_inc [0:STAT_COUNT-1];
reg [31:0] stat_add [0:STAT_COUNT-1];

// The clocked process below assigns per-cycle temporaries (ev, stat_inc, stat_add, q_next_cons) with
// blocking assignments: they are built up and consumed within the same edge. Registers use <=.
/* verilator lint_off BLKSEQ */
task stop_queue;
    input q;
    input [1:0] status;
    begin
        if (status == DONE_TIMEOUT) q_timeout_reg[q] <= 1'b1;
        else q_dma_err_reg[q] <= 1'b1;
        ev[IRQ_ERR_BIT] = 1'b1;
        stat_inc[ST_DMA_ERRORS] = 1'b1;
    end
endtask

always @(posedge clk) begin
    ev = 3'd0;
    for (i = 0; i < STAT_COUNT; i = i + 1) begin
        stat_inc[i] = 1'b0;
        stat_add[i] = 32'd0;
    end

    /* register writes */
    if (reg_wr_en) begin
        case (reg_wr_addr & 16'hfffc)
            REG_CTRL:            ctrl_reg <= apply_strb(ctrl_reg, reg_wr_data, reg_wr_strb);
            REG_IRQ_ENABLE:      irq_en_reg <= apply_strb(irq_en_reg, reg_wr_data, reg_wr_strb);
            REG_IRQ_STATUS: begin
                // write 1 to clear: applied with the new events below
            end
            REG_IRQ_COAL_COUNT:  coal_count_reg <= apply_strb(coal_count_reg, reg_wr_data, reg_wr_strb);
            REG_IRQ_COAL_TIMER:  coal_timer_reg <= apply_strb(coal_timer_reg, reg_wr_data, reg_wr_strb);
            REG_CPL_TIMEOUT:     cpl_timeout_reg <= apply_strb(cpl_timeout_reg, reg_wr_data, reg_wr_strb);
            REG_SCRATCH:         scratch_reg <= apply_strb(scratch_reg, reg_wr_data, reg_wr_strb);
            REG_TXQ_BASE_LO:     q_base_reg[0][31:0] <= apply_strb(q_base_reg[0][31:0], reg_wr_data, reg_wr_strb);
            REG_TXQ_BASE_HI:     q_base_reg[0][63:32] <= apply_strb(q_base_reg[0][63:32], reg_wr_data, reg_wr_strb);
            REG_TXQ_SIZE:        q_size_reg[0] <= apply_strb(q_size_reg[0], reg_wr_data, reg_wr_strb);
            REG_TXQ_PROD:        q_prod_reg[0] <= index_write(q_prod_reg[0], reg_wr_data[15:0], reg_wr_strb[1:0], q_mask[0]);
            REG_TXQ_CPL_BASE_LO: q_cpl_base_reg[0][31:0] <= apply_strb(q_cpl_base_reg[0][31:0], reg_wr_data, reg_wr_strb);
            REG_TXQ_CPL_BASE_HI: q_cpl_base_reg[0][63:32] <= apply_strb(q_cpl_base_reg[0][63:32], reg_wr_data, reg_wr_strb);
            REG_RXQ_BASE_LO:     q_base_reg[1][31:0] <= apply_strb(q_base_reg[1][31:0], reg_wr_data, reg_wr_strb);
            REG_RXQ_BASE_HI:     q_base_reg[1][63:32] <= apply_strb(q_base_reg[1][63:32], reg_wr_data, reg_wr_strb);
            REG_RXQ_SIZE:        q_size_reg[1] <= apply_strb(q_size_reg[1], reg_wr_data, reg_wr_strb);
            REG_RXQ_PROD:        q_prod_reg[1] <= index_write(q_prod_reg[1], reg_wr_data[15:0], reg_wr_strb[1:0], q_mask[1]);
            REG_RXQ_CPL_BASE_LO: q_cpl_base_reg[1][31:0] <= apply_strb(q_cpl_base_reg[1][31:0], reg_wr_data, reg_wr_strb);
            REG_RXQ_CPL_BASE_HI: q_cpl_base_reg[1][63:32] <= apply_strb(q_cpl_base_reg[1][63:32], reg_wr_data, reg_wr_strb);
            REG_TXQ_CTRL, REG_RXQ_CTRL: begin
                // enable only with a valid size; disable resets the queue
                if (reg_wr_strb[0]) begin
                    if (reg_wr_data[QCTRL_ENABLE_BIT]) begin
                        q_enable_reg[reg_wr_addr[9]] <= !q_size_err[reg_wr_addr[9]];
                    end else begin
                        q_enable_reg[reg_wr_addr[9]] <= 1'b0;
                        q_prod_reg[reg_wr_addr[9]] <= 16'd0;
                        q_cons_reg[reg_wr_addr[9]] <= 16'd0;
                        q_phase_reg[reg_wr_addr[9]] <= 1'b0;
                        q_dma_err_reg[reg_wr_addr[9]] <= 1'b0;
                        q_timeout_reg[reg_wr_addr[9]] <= 1'b0;
                        q_desc_err_reg[reg_wr_addr[9]] <= 1'b0;
                    end
                end
            end
            REG_MSIX_TABLE:      msix_addr_lo_reg <= apply_strb(msix_addr_lo_reg, reg_wr_data, reg_wr_strb) & 32'hfffffffc;
            REG_MSIX_TABLE + 4:  msix_addr_hi_reg <= apply_strb(msix_addr_hi_reg, reg_wr_data, reg_wr_strb);
            REG_MSIX_TABLE + 8:  msix_data_reg <= apply_strb(msix_data_reg, reg_wr_data, reg_wr_strb);
            REG_MSIX_TABLE + 12: msix_ctrl_reg <= apply_strb(msix_ctrl_reg, reg_wr_data, reg_wr_strb) & 32'd1;
            REG_ID, REG_VERSION, REG_STATUS, REG_LINK_PARAMS, REG_DMA_TAGS,
            REG_TXQ_CONS, REG_TXQ_STATUS, REG_RXQ_CONS, REG_RXQ_STATUS, REG_MSIX_PBA: begin
                // read-only: writes ignored
            end
            default: begin
                if (!((reg_wr_addr & 16'hfffc) >= REG_STAT_TX_PKTS && (reg_wr_addr & 16'hfffc) < REG_STAT_TX_PKTS + STAT_COUNT*4)) begin
                    stat_inc[ST_MMIO_UNMAPPED] = 1'b1;
                end
            end
        endcase
    end
    if (reg_rd_en && !rd_mapped) begin
        stat_inc[ST_MMIO_UNMAPPED] = 1'b1;
    end

    /* TX engine */
    case (tx_state_reg)
        TX_IDLE: begin
            if (q_active[0] && q_prod_reg[0] != q_cons_reg[0]) begin
                rd_req_valid[0] <= 1'b1;
                rd_req_addr[0 +: 64] <= q_base_reg[0] + {44'd0, q_cons_reg[0] & q_mask[0], 4'd0};
                rd_req_len[0 +: 16] <= DESC_BYTES;
                rd_req_ram[0 +: RD_RAM_AW] <= RAM_TX_DESC;
                tx_state_reg <= TX_DESC_REQ;
            end
        end
        TX_DESC_REQ, TX_DATA_REQ: begin
            if (rd_req_ready[0]) begin
                rd_req_valid[0] <= 1'b0;
                tx_state_reg <= tx_state_reg + 4'd1;
            end
        end
        TX_DESC_WAIT: begin
            if (rd_done[0]) begin
                if (rd_done_status[1:0] != DONE_OK) begin
                    stop_queue(1'b0, rd_done_status[1:0]);
                    tx_state_reg <= TX_IDLE;
                end else if (tx_desc_len == 32'd0 || tx_desc_len > frame_max || tx_desc_addr[1:0] != 2'b00) begin
                    q_desc_err_reg[0] <= 1'b1;
                    ev[IRQ_ERR_BIT] = 1'b1;
                    stat_inc[ST_DMA_ERRORS] = 1'b1;
                    tx_state_reg <= TX_IDLE;
                end else begin
                    tx_buf_addr_reg <= tx_desc_addr;
                    tx_len_reg <= tx_desc_len[15:0];
                    rd_req_valid[0] <= 1'b1;
                    rd_req_addr[0 +: 64] <= tx_desc_addr;
                    rd_req_len[0 +: 16] <= tx_desc_len[15:0];
                    rd_req_ram[0 +: RD_RAM_AW] <= RAM_TX_PKT;
                    tx_state_reg <= TX_DATA_REQ;
                end
            end
        end
        TX_DATA_WAIT: begin
            if (rd_done[0]) begin
                if (rd_done_status[1:0] != DONE_OK) begin
                    stop_queue(1'b0, rd_done_status[1:0]);
                    tx_state_reg <= TX_IDLE;
                end else begin
                    tx_ptr_reg <= 16'd0;
                    tx_state_reg <= TX_SEND;
                end
            end
        end
        TX_SEND: begin
            if (tx_out_ready) begin
                tx_ptr_reg <= tx_ptr_reg + 16'd8;
                if (tx_out_last) begin
                    wr_req_valid[0] <= 1'b1;
                    wr_req_addr[0 +: 64] <= q_cpl_base_reg[0] + {44'd0, q_cons_reg[0] & q_mask[0], 4'd0};
                    wr_req_len[0 +: 16] <= CPL_BYTES;
                    wr_req_imm_en[0] <= 1'b1;
                    wr_req_imm[0 +: 128] <= {1'b1, 30'd0, q_phase_reg[0], 32'd0, 16'd0, tx_len_reg,
                                              8'd0, CPL_STATUS_OK[7:0], q_cons_reg[0] & q_mask[0]};
                    tx_state_reg <= TX_CPL_REQ;
                end
            end
        end
        TX_CPL_REQ: begin
            if (wr_req_ready[0]) begin
                wr_req_valid[0] <= 1'b0;
                tx_state_reg <= TX_CPL_WAIT;
            end
        end
        TX_CPL_WAIT: begin
            if (wr_done[0]) begin
                q_next_cons = (q_cons_reg[0] + 16'd1) & q_mask[0];
                if (q_enable_reg[0]) begin
                    q_cons_reg[0] <= q_next_cons;
                    if (q_next_cons == 16'd0) q_phase_reg[0] <= !q_phase_reg[0];
                end
                stat_inc[ST_TX_PKTS] = 1'b1;
                stat_add[ST_TX_BYTES] = {16'd0, tx_len_reg};
                ev[IRQ_TX_BIT] = 1'b1;
                tx_state_reg <= TX_IDLE;
            end
        end
        default: tx_state_reg <= TX_IDLE;
    endcase

    /* RX engine */
    case (rx_state_reg)
        RX_RECV: begin
            if (rx_in_valid) begin
                if (rx_len_reg + 16'd8 <= RX_STORE_DW*4) begin
                    rx_ram[rx_len_reg[WR_RAM_AW+1:2]] <= rx_in_data[31:0];
                    rx_ram[rx_len_reg[WR_RAM_AW+1:2] + 1'b1] <= rx_in_data[63:32];
                    rx_len_reg <= rx_len_reg + {12'd0, popcount8(rx_in_keep)};
                end else begin
                    rx_trunc_reg <= 1'b1;
                end
                if (rx_in_last) begin
                    rx_state_reg <= RX_WAIT_RING;
                end
            end
        end
        RX_WAIT_RING: begin
            if (q_active[1] && q_prod_reg[1] != q_cons_reg[1]) begin
                rd_req_valid[1] <= 1'b1;
                rd_req_addr[64 +: 64] <= q_base_reg[1] + {44'd0, q_cons_reg[1] & q_mask[1], 4'd0};
                rd_req_len[16 +: 16] <= DESC_BYTES;
                rd_req_ram[RD_RAM_AW +: RD_RAM_AW] <= RAM_RX_DESC;
                rx_state_reg <= RX_DESC_REQ;
            end
        end
        RX_DESC_REQ: begin
            if (rd_req_ready[1]) begin
                rd_req_valid[1] <= 1'b0;
                rx_state_reg <= RX_DESC_WAIT;
            end
        end
        RX_DESC_WAIT: begin
            if (rd_done[1]) begin
                if (rd_done_status[3:2] != DONE_OK) begin
                    stop_queue(1'b1, rd_done_status[3:2]);
                    rx_state_reg <= RX_WAIT_RING;  // the frame waits for the queue to be reset
                end else if (rx_desc_len == 32'd0 || rx_desc_addr[1:0] != 2'b00) begin
                    q_desc_err_reg[1] <= 1'b1;
                    ev[IRQ_ERR_BIT] = 1'b1;
                    stat_inc[ST_DMA_ERRORS] = 1'b1;
                    rx_state_reg <= RX_WAIT_RING;
                end else begin
                    rx_buf_addr_reg <= rx_desc_addr;
                    if ({16'd0, rx_len_reg} > rx_desc_len) begin
                        rx_dma_len_reg <= rx_desc_len[15:0];
                        rx_trunc_reg <= 1'b1;
                    end else begin
                        rx_dma_len_reg <= rx_len_reg;
                    end
                    rx_state_reg <= RX_DATA_REQ;
                end
            end
        end
        RX_DATA_REQ: begin
            wr_req_valid[1] <= 1'b1;
            wr_req_addr[64 +: 64] <= rx_buf_addr_reg;
            wr_req_len[16 +: 16] <= rx_dma_len_reg;
            wr_req_imm_en[1] <= 1'b0;
            wr_req_ram[WR_RAM_AW +: WR_RAM_AW] <= {WR_RAM_AW{1'b0}};
            if (wr_req_valid[1] && wr_req_ready[1]) begin
                wr_req_valid[1] <= 1'b0;
                rx_state_reg <= RX_DATA_WAIT;
            end
        end
        RX_DATA_WAIT: begin
            if (wr_done[1]) begin
                wr_req_valid[1] <= 1'b1;
                wr_req_addr[64 +: 64] <= q_cpl_base_reg[1] + {44'd0, q_cons_reg[1] & q_mask[1], 4'd0};
                wr_req_len[16 +: 16] <= CPL_BYTES;
                wr_req_imm_en[1] <= 1'b1;
                wr_req_imm[128 +: 128] <= {1'b1, 30'd0, q_phase_reg[1], 32'd0, 16'd0, rx_dma_len_reg,
                                            8'd0, rx_trunc_reg ? CPL_STATUS_TRUNC[7:0] : CPL_STATUS_OK[7:0],
                                            q_cons_reg[1] & q_mask[1]};
                rx_state_reg <= RX_CPL_REQ;
            end
        end
        RX_CPL_REQ: begin
            if (wr_req_ready[1]) begin
                wr_req_valid[1] <= 1'b0;
                rx_state_reg <= RX_CPL_WAIT;
            end
        end
        RX_CPL_WAIT: begin
            if (wr_done[1]) begin
                q_next_cons = (q_cons_reg[1] + 16'd1) & q_mask[1];
                if (q_enable_reg[1]) begin
                    q_cons_reg[1] <= q_next_cons;
                    if (q_next_cons == 16'd0) q_phase_reg[1] <= !q_phase_reg[1];
                end
                stat_inc[ST_RX_PKTS] = 1'b1;
                stat_add[ST_RX_BYTES] = {16'd0, rx_dma_len_reg};
                stat_inc[ST_RX_TRUNC] = rx_trunc_reg;
                ev[IRQ_RX_BIT] = 1'b1;
                rx_len_reg <= 16'd0;
                rx_trunc_reg <= 1'b0;
                rx_state_reg <= RX_RECV;
            end
        end
        default: rx_state_reg <= RX_RECV;
    endcase

    /* interrupts: coalesce enabled events, then one MSI-X write (vector 0) */
    irq_status_reg <= (irq_status_reg & ~(reg_wr_en && (reg_wr_addr & 16'hfffc) == REG_IRQ_STATUS
                       ? apply_strb(32'd0, reg_wr_data, reg_wr_strb) : 32'd0)) | {29'd0, ev};
    if (irq_pending_reg != 32'd0 && irq_timer_reg != 32'hffffffff) begin
        irq_timer_reg <= irq_timer_reg + 32'd1;
    end
    case (irq_state_reg)
        IRQ_IDLE: begin
            if (irq_due || msix_pending_reg) begin
                if (irq_can_send) begin
                    wr_req_valid[2] <= 1'b1;
                    wr_req_addr[128 +: 64] <= {msix_addr_hi_reg, msix_addr_lo_reg};
                    wr_req_len[32 +: 16] <= 16'd4;
                    wr_req_imm_en[2] <= 1'b1;
                    wr_req_imm[256 +: 128] <= {96'd0, msix_data_reg};
                    msix_pending_reg <= 1'b0;
                    irq_state_reg <= IRQ_REQ;
                end else begin
                    msix_pending_reg <= 1'b1;
                end
                irq_pending_reg <= 32'd0;
                irq_timer_reg <= 32'd0;
            end
        end
        IRQ_REQ: begin
            if (wr_req_ready[2]) begin
                wr_req_valid[2] <= 1'b0;
                irq_state_reg <= IRQ_WAIT;
            end
        end
        IRQ_WAIT: begin
            if (wr_done[2]) begin
                stat_inc[ST_IRQS] = 1'b1;
                irq_state_reg <= IRQ_IDLE;
            end
        end
        default: irq_state_reg <= IRQ_IDLE;
    endcase
    if ((ev & irq_en_reg[2:0]) != 3'd0) begin
        if (irq_state_reg == IRQ_IDLE && (irq_due || msix_pending_reg)) begin
            irq_pending_reg <= 32'd1;
        end else begin
            irq_pending_reg <= irq_pending_reg + 32'd1;
        end
    end

    /* statistics */
    stat_inc[ST_TLP_MEM_RD] = stat_mem_rd;
    stat_inc[ST_TLP_MEM_WR] = stat_mem_wr;
    stat_inc[ST_TLP_CPL_TX] = stat_cpl_tx;
    stat_inc[ST_TLP_REQ_RX] = stat_req_rx;
    stat_inc[ST_TLP_CPL_RX] = stat_cpl_rx;
    stat_inc[ST_CPL_TIMEOUTS] = stat_timeout;
    stat_inc[ST_UNEXP_CPL] = stat_unexp_cpl;
    stat_inc[ST_UR_SENT] = stat_ur_sent;
    stat_inc[ST_MMIO_DROPPED] = stat_mmio_dropped;
    for (i = 0; i < STAT_COUNT; i = i + 1) begin
        stat_reg[i] <= stat_reg[i] + {31'd0, stat_inc[i]} + stat_add[i];
    end

    if (rst) begin
        tx_state_reg <= TX_IDLE;
        rx_state_reg <= RX_RECV;
        irq_state_reg <= IRQ_IDLE;
        rd_req_valid <= 2'b00;
        wr_req_valid <= 3'b000;
        rx_len_reg <= 16'd0;
        rx_trunc_reg <= 1'b0;
        ctrl_reg <= 32'd0;
        irq_en_reg <= 32'd0;
        irq_status_reg <= 32'd0;
        irq_pending_reg <= 32'd0;
        msix_pending_reg <= 1'b0;
        for (i = 0; i < STAT_COUNT; i = i + 1) begin
            stat_reg[i] <= 32'd0;
        end
        for (i = 0; i < 2; i = i + 1) begin
            q_enable_reg[i] <= 1'b0;
            q_prod_reg[i] <= 16'd0;
            q_cons_reg[i] <= 16'd0;
            q_phase_reg[i] <= 1'b0;
            q_dma_err_reg[i] <= 1'b0;
            q_timeout_reg[i] <= 1'b0;
            q_desc_err_reg[i] <= 1'b0;
        end
    end
end
/* verilator lint_on BLKSEQ */

wire unused_ok = &{1'b0, tx_buf_addr_reg, stat_off[15:7], stat_off[1:0]};

endmodule

`resetall
