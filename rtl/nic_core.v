`resetall
`timescale 1ns / 1ps
`default_nettype none

/* NIC core: registers, queue state, TX/RX engines, completion records, MSI-X interrupts, statistics */
module nic_core #
(
    // DWORD lanes of the DMA ports (PCIe data width / 32)
    parameter KEEP_WIDTH = 2,
    // PCIe user interface data width, reported in REG_LINK_PARAMS
    parameter DATA_WIDTH = KEEP_WIDTH*32,
    // register address width (bytes)
    parameter REG_ADDR_WIDTH = 16,
    // DWORD address width of the DMA read destination RAM (TX packet buffer + descriptor caches)
    parameter RD_RAM_AW = 15,
    // DWORD address width of the RX frame store
    parameter WR_RAM_AW = 13,
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
    input  wire                          cfg_ext_tag_enable,
    input  wire                          cfg_ro_enable,
    input  wire                          cfg_ns_enable,

    /* DMA read engine: limits, jobs (0 TX descriptors, 1 TX data, 2 RX descriptors), done, status */
    output wire [31:0]                   cpl_timeout,
    output wire [31:0]                   tag_hold,
    output wire [8:0]                    cplh_limit,
    output wire [11:0]                   cpld_limit,
    output wire [2:0]                    rd_job_valid,
    input  wire [2:0]                    rd_job_ready,
    output wire [3*64-1:0]               rd_job_addr,
    output wire [3*16-1:0]               rd_job_len,
    output wire [3*RD_RAM_AW-1:0]        rd_job_ram,
    output wire [3*8-1:0]                rd_job_id,
    output wire [3*3-1:0]                rd_job_attr,
    input  wire                          rd_done_valid,
    input  wire [1:0]                    rd_done_port,
    input  wire [7:0]                    rd_done_id,
    input  wire [1:0]                    rd_done_status,
    output wire [1:0]                    quar_release,
    input  wire [8:0]                    tags_in_flight,
    input  wire [8:0]                    tags_quarantined,
    input  wire [8:0]                    tag_limit,
    input  wire [1:0]                    quar_full,
    input  wire [1:0]                    release_busy,
    input  wire [8:0]                    cplh_used,
    input  wire [11:0]                   cpld_used,

    /* DMA read destination RAM write lanes */
    input  wire [KEEP_WIDTH-1:0]         ram_wr_en,
    input  wire [KEEP_WIDTH*RD_RAM_AW-1:0] ram_wr_addr,
    input  wire [KEEP_WIDTH*32-1:0]      ram_wr_data,

    /* DMA write engine: jobs (0 RX data, 1 completion records, 2 MSI-X), done */
    output wire [2:0]                    wr_job_valid,
    input  wire [2:0]                    wr_job_ready,
    output wire [3*64-1:0]               wr_job_addr,
    output wire [3*16-1:0]               wr_job_len,
    output wire [2:0]                    wr_job_imm_en,
    output wire [3*128-1:0]              wr_job_imm,
    output wire [3*WR_RAM_AW-1:0]        wr_job_src,
    output wire [3*3-1:0]                wr_job_attr,
    input  wire [2:0]                    wr_done,

    /* RX frame store read lanes (DMA write source) */
    input  wire [KEEP_WIDTH*WR_RAM_AW-1:0] src_rd_addr,
    output wire [KEEP_WIDTH*32-1:0]      src_rd_data,

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
    input  wire [12:0]                   stat_rd_bytes,
    input  wire                          stat_mem_wr,
    input  wire [12:0]                   stat_wr_bytes,
    input  wire                          stat_cpl_tx,
    input  wire                          stat_req_rx,
    input  wire                          stat_cpl_rx,
    input  wire                          stat_unexp_cpl,
    input  wire                          stat_timeout,
    input  wire                          stat_rd_err,
    input  wire                          stat_ur_sent,
    input  wire                          stat_mmio_dropped,
    input  wire                          stat_credit_stall,
    input  wire                          stat_tag_stall,
    input  wire                          stat_quar_release
);

`include "nic_regs.vh"

// statistics counter index of each REG_STAT_* register (derived from the register map)
localparam integer ST_TX_PKTS = ({16'd0, REG_STAT_TX_PKTS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TX_BYTES = ({16'd0, REG_STAT_TX_BYTES} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_RX_PKTS = ({16'd0, REG_STAT_RX_PKTS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_RX_BYTES = ({16'd0, REG_STAT_RX_BYTES} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TLP_MEM_RD = ({16'd0, REG_STAT_TLP_MEM_RD} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TLP_MEM_WR = ({16'd0, REG_STAT_TLP_MEM_WR} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TLP_CPL_TX = ({16'd0, REG_STAT_TLP_CPL_TX} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TLP_REQ_RX = ({16'd0, REG_STAT_TLP_REQ_RX} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TLP_CPL_RX = ({16'd0, REG_STAT_TLP_CPL_RX} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_DMA_ERRORS = ({16'd0, REG_STAT_DMA_ERRORS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_CPL_TIMEOUTS = ({16'd0, REG_STAT_CPL_TIMEOUTS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_UNEXP_CPL = ({16'd0, REG_STAT_UNEXP_CPL} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_UR_SENT = ({16'd0, REG_STAT_UR_SENT} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_MMIO_UNMAPPED = ({16'd0, REG_STAT_MMIO_UNMAPPED} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_IRQS = ({16'd0, REG_STAT_IRQS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_RX_TRUNC = ({16'd0, REG_STAT_RX_TRUNC} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_MMIO_DROPPED = ({16'd0, REG_STAT_MMIO_DROPPED} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TAG_EXHAUSTED = ({16'd0, REG_STAT_TAG_EXHAUSTED} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_QUAR_RELEASED = ({16'd0, REG_STAT_QUAR_RELEASED} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_CREDIT_STALLS = ({16'd0, REG_STAT_CREDIT_STALLS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_TAG_STALLS = ({16'd0, REG_STAT_TAG_STALLS} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_RD_BYTES = ({16'd0, REG_STAT_RD_BYTES} - {16'd0, REG_STAT_TX_PKTS}) / 4;
localparam integer ST_WR_BYTES = ({16'd0, REG_STAT_WR_BYTES} - {16'd0, REG_STAT_TX_PKTS}) / 4;

// layout of the read destination RAM (DWORD addresses): TX packet buffer, then the two descriptor caches
localparam TX_BUF_DW = TX_BUF_BYTES / 4;
localparam [RD_RAM_AW-1:0] RAM_TX_BUF  = {RD_RAM_AW{1'b0}};
localparam [RD_RAM_AW-1:0] RAM_TX_DESC = TX_BUF_DW[RD_RAM_AW-1:0];
localparam [RD_RAM_AW-1:0] RAM_RX_DESC = RAM_TX_DESC + DESC_CACHE[RD_RAM_AW-1:0] * 4;
localparam [1:0] QERR_DESC = 2'd0, QERR_DMA = 2'd1, QERR_TIMEOUT = 2'd2, QERR_QUAR = 2'd3;
localparam [1:0] IRQ_IDLE = 2'd0, IRQ_REQ = 2'd1, IRQ_WAIT = 2'd2;

initial begin
    if (STAT_COUNT != 23 || ST_WR_BYTES != 22) begin
        $error("Error: statistics counters disagree with nic_regs.vh (instance %m)");
        $finish;
    end
    if (DESC_BYTES != 16 || CPL_BYTES != 16 || TAG_TABLE_SIZE != 256) begin
        $error("Error: descriptor/record layout or tag table size differ from what the engines implement (instance %m)");
        $finish;
    end
    if (MSIX_VECTORS != 1) begin
        $error("Error: the core implements one MSI-X vector (instance %m)");
        $finish;
    end
    if ((1 << RD_RAM_AW) < TX_BUF_DW + 8*DESC_CACHE || (1 << WR_RAM_AW) != RX_STORE_BYTES/4) begin
        $error("Error: RD_RAM_AW / WR_RAM_AW do not fit the buffers of nic_regs.vh (instance %m)");
        $finish;
    end
end

integer i;

/* the DMA read destination RAM */
reg [31:0] rd_ram [0:(1<<RD_RAM_AW)-1];
initial begin
    for (i = 0; i < (1<<RD_RAM_AW); i = i + 1) rd_ram[i] = 32'd0;
end
always @(posedge clk) begin
    for (i = 0; i < KEEP_WIDTH; i = i + 1) begin
        if (ram_wr_en[i]) begin
            rd_ram[ram_wr_addr[i*RD_RAM_AW +: RD_RAM_AW]] <= ram_wr_data[i*32 +: 32];
        end
    end
end

/* registers */
reg [31:0] ctrl_reg;
reg [31:0] irq_en_reg;
reg [31:0] irq_status_reg;
reg [31:0] coal_count_reg;
reg [31:0] coal_timer_reg;
reg [31:0] cpl_timeout_reg;
reg [31:0] tag_hold_reg;
reg [31:0] scratch_reg;
reg [8:0]  cplh_limit_reg;
reg [11:0] cpld_limit_reg;

// queue 0 = TX, 1 = RX
reg [63:0] q_base_reg     [0:1];
reg [31:0] q_size_reg     [0:1];
reg [15:0] q_prod_reg     [0:1];
reg [15:0] q_cons_reg     [0:1];
reg [63:0] q_cpl_base_reg [0:1];
reg        q_enable_reg   [0:1];
reg        q_dma_err_reg  [0:1];
reg        q_timeout_reg  [0:1];
reg        q_desc_err_reg [0:1];
reg        q_quar_reg     [0:1];

reg [31:0] msix_addr_lo_reg;
reg [31:0] msix_addr_hi_reg;
reg [31:0] msix_data_reg;
reg [31:0] msix_ctrl_reg;
reg        msix_pending_reg;

reg [31:0] stat_reg [0:STAT_COUNT-1];

initial begin
    ctrl_reg = 32'd0;
    irq_en_reg = 32'd0;
    irq_status_reg = 32'd0;
    coal_count_reg = 32'd0;
    coal_timer_reg = 32'd0;
    cpl_timeout_reg = CPL_TIMEOUT_DEFAULT;
    tag_hold_reg = 4*CPL_TIMEOUT_DEFAULT;
    scratch_reg = 32'd0;
    cplh_limit_reg = CPLH_LIMIT_DEFAULT[8:0];
    cpld_limit_reg = CPLD_LIMIT_DEFAULT[11:0];
    for (i = 0; i < 2; i = i + 1) begin
        q_base_reg[i] = 64'd0;
        q_size_reg[i] = 32'd0;
        q_prod_reg[i] = 16'd0;
        q_cons_reg[i] = 16'd0;
        q_cpl_base_reg[i] = 64'd0;
        q_enable_reg[i] = 1'b0;
        q_dma_err_reg[i] = 1'b0;
        q_timeout_reg[i] = 1'b0;
        q_desc_err_reg[i] = 1'b0;
        q_quar_reg[i] = 1'b0;
    end
    msix_addr_lo_reg = 32'd0;
    msix_addr_hi_reg = 32'd0;
    msix_data_reg = 32'd0;
    msix_ctrl_reg = 32'd1;  // vectors start masked (PCIe 6.8.2.9)
    msix_pending_reg = 1'b0;
    for (i = 0; i < STAT_COUNT; i = i + 1) stat_reg[i] = 32'd0;
end

assign cpl_timeout = cpl_timeout_reg;
assign tag_hold = tag_hold_reg;
assign cplh_limit = cplh_limit_reg;
assign cpld_limit = cpld_limit_reg;

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

/* queue state seen by the engines and the status registers */
wire        tx_drain, rx_drain;
wire        q_drain [0:1];
// draining: the engine's DMA of a stopped/disabled queue is still out, or a quarantine release pass runs
assign q_drain[0] = tx_drain || release_busy[0];
assign q_drain[1] = rx_drain || release_busy[1];
wire        q_size_err [0:1];
wire        q_err      [0:1];
wire        q_run      [0:1];
wire        q_active   [0:1];
wire        q_quar     [0:1];
wire [15:0] q_mask     [0:1];
genvar g;
generate
    for (g = 0; g < 2; g = g + 1) begin : qstat
        assign q_size_err[g] = !size_ok(q_size_reg[g]);
        assign q_quar[g] = q_quar_reg[g] || quar_full[g];
        assign q_err[g] = q_dma_err_reg[g] || q_timeout_reg[g] || q_desc_err_reg[g] || q_quar[g];
        assign q_run[g] = q_enable_reg[g] && !q_size_err[g] && !q_err[g];
        // never "active" while stuck: not while an error holds it, nor while its tags are exhausted or it drains
        assign q_active[g] = q_run[g] && !q_drain[g];
        assign q_mask[g] = q_size_reg[g][15:0] - 16'd1;
    end
endgenerate

function [31:0] q_status;
    input active, size_err, dma_err, timeout_err, desc_err, quar, drain;
    begin
        q_status = 32'd0;
        q_status[QSTAT_ACTIVE_BIT] = active;
        q_status[QSTAT_SIZE_ERR_BIT] = size_err;
        q_status[QSTAT_DMA_ERR_BIT] = dma_err;
        q_status[QSTAT_TIMEOUT_BIT] = timeout_err;
        q_status[QSTAT_DESC_ERR_BIT] = desc_err;
        q_status[QSTAT_QUAR_BIT] = quar;
        q_status[QSTAT_DRAIN_BIT] = drain;
    end
endfunction

reg [31:0] status_word;
always @* begin
    status_word = 32'd0;
    status_word[STATUS_BUS_MASTER_BIT] = cfg_bus_master;
    status_word[STATUS_MSIX_EN_BIT] = cfg_msix_enable;
    status_word[STATUS_TXQ_ERR_BIT] = q_err[0];
    status_word[STATUS_RXQ_ERR_BIT] = q_err[1];
end
wire [2:0] dw_code = DATA_WIDTH == 64 ? 3'd0 : DATA_WIDTH == 128 ? 3'd1 : 3'd3;
reg [31:0] devctl_word;
always @* begin
    devctl_word = 32'd0;
    devctl_word[DEVCTL_EXT_TAG_BIT] = cfg_ext_tag_enable;
    devctl_word[DEVCTL_RO_BIT] = cfg_ro_enable;
    devctl_word[DEVCTL_NS_BIT] = cfg_ns_enable;
end

/* attributes of packet data DMA: relaxed ordering / no snoop when the driver asks and Device Control allows */
wire [2:0] data_attr = {1'b0, ctrl_reg[CTRL_RO_BIT] && cfg_ro_enable, ctrl_reg[CTRL_NS_BIT] && cfg_ns_enable};

/* register read mux */
wire [15:0] rd_off = reg_rd_addr & 16'hfffc;
wire [15:0] stat_off = rd_off - REG_STAT_TX_PKTS;
wire        rd_is_stat = rd_off >= REG_STAT_TX_PKTS && rd_off < REG_STAT_TX_PKTS + STAT_COUNT*4;
reg rd_mapped;
always @* begin
    reg_rd_data = 32'd0;
    rd_mapped = 1'b1;
    case (rd_off)
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
        REG_DMA_TAGS:        reg_rd_data = {5'd0, tag_limit, tags_quarantined, tags_in_flight};
        REG_DEV_CTL:         reg_rd_data = devctl_word;
        REG_DMA_CREDITS:     reg_rd_data = {4'd0, cpld_limit_reg, 7'd0, cplh_limit_reg};
        REG_DMA_CREDITS_USED: reg_rd_data = {4'd0, cpld_used, 7'd0, cplh_used};
        REG_TAG_HOLD:        reg_rd_data = tag_hold_reg;
        REG_TXQ_BASE_LO:     reg_rd_data = q_base_reg[0][31:0];
        REG_TXQ_BASE_HI:     reg_rd_data = q_base_reg[0][63:32];
        REG_TXQ_SIZE:        reg_rd_data = q_size_reg[0];
        REG_TXQ_PROD:        reg_rd_data = {16'd0, q_prod_reg[0]};
        REG_TXQ_CONS:        reg_rd_data = {16'd0, q_cons_reg[0]};
        REG_TXQ_CPL_BASE_LO: reg_rd_data = q_cpl_base_reg[0][31:0];
        REG_TXQ_CPL_BASE_HI: reg_rd_data = q_cpl_base_reg[0][63:32];
        REG_TXQ_CTRL:        reg_rd_data = {31'd0, q_enable_reg[0]};
        REG_TXQ_STATUS:      reg_rd_data = q_status(q_active[0], q_size_err[0], q_dma_err_reg[0], q_timeout_reg[0],
                                                    q_desc_err_reg[0], q_quar[0], q_drain[0]);
        REG_RXQ_BASE_LO:     reg_rd_data = q_base_reg[1][31:0];
        REG_RXQ_BASE_HI:     reg_rd_data = q_base_reg[1][63:32];
        REG_RXQ_SIZE:        reg_rd_data = q_size_reg[1];
        REG_RXQ_PROD:        reg_rd_data = {16'd0, q_prod_reg[1]};
        REG_RXQ_CONS:        reg_rd_data = {16'd0, q_cons_reg[1]};
        REG_RXQ_CPL_BASE_LO: reg_rd_data = q_cpl_base_reg[1][31:0];
        REG_RXQ_CPL_BASE_HI: reg_rd_data = q_cpl_base_reg[1][63:32];
        REG_RXQ_CTRL:        reg_rd_data = {31'd0, q_enable_reg[1]};
        REG_RXQ_STATUS:      reg_rd_data = q_status(q_active[1], q_size_err[1], q_dma_err_reg[1], q_timeout_reg[1],
                                                    q_desc_err_reg[1], q_quar[1], q_drain[1]);
        REG_MSIX_TABLE:      reg_rd_data = msix_addr_lo_reg;
        REG_MSIX_TABLE + 4:  reg_rd_data = msix_addr_hi_reg;
        REG_MSIX_TABLE + 8:  reg_rd_data = msix_data_reg;
        REG_MSIX_TABLE + 12: reg_rd_data = msix_ctrl_reg;
        REG_MSIX_PBA:        reg_rd_data = {31'd0, msix_pending_reg};
        default: begin
            if (rd_is_stat) begin
                reg_rd_data = stat_reg[stat_off[6:2]];
            end else begin
                rd_mapped = 1'b0;  // unmapped: reads as zero
            end
        end
    endcase
end

/* ---- queue engines ---- */
wire [63:0] tx_mac_tdata;
wire [7:0]  tx_mac_tkeep;
wire        tx_mac_tlast, tx_mac_tvalid, tx_mac_tready;
wire        loopback = ctrl_reg[CTRL_LOOPBACK_BIT];
wire        rx_in_ready;
assign m_axis_tx_tdata = tx_mac_tdata;
assign m_axis_tx_tkeep = tx_mac_tkeep;
assign m_axis_tx_tlast = tx_mac_tlast;
assign m_axis_tx_tvalid = tx_mac_tvalid && !loopback;
assign tx_mac_tready = loopback ? rx_in_ready : m_axis_tx_tready;
assign s_axis_rx_tready = rx_in_ready && !loopback;

wire [RD_RAM_AW-1:0] tx_desc_rd_addr, tx_pkt_rd_addr, rx_desc_rd_addr;
wire [95:0] tx_desc_rd_data = {rd_ram[tx_desc_rd_addr + 2], rd_ram[tx_desc_rd_addr + 1], rd_ram[tx_desc_rd_addr]};
wire [63:0] tx_pkt_rd_data  = {rd_ram[tx_pkt_rd_addr + 1], rd_ram[tx_pkt_rd_addr]};
wire [95:0] rx_desc_rd_data = {rd_ram[rx_desc_rd_addr + 2], rd_ram[rx_desc_rd_addr + 1], rd_ram[rx_desc_rd_addr]};

wire        tx_cw_valid, tx_cw_ready, tx_cw_phase, tx_cw_done;
wire [15:0] tx_cw_index, tx_cw_len;
wire        rx_cw_valid, rx_cw_ready, rx_cw_trunc, rx_cw_phase, rx_cw_done;
wire [15:0] rx_cw_index, rx_cw_len;
wire        tx_cons_adv, tx_err_valid, tx_stat_pkt;
wire [1:0]  tx_err_code;
wire [15:0] tx_stat_bytes;
wire        rx_cons_adv, rx_irq_event, rx_err_valid, rx_stat_pkt, rx_stat_trunc;
wire [1:0]  rx_err_code;
wire [15:0] rx_stat_bytes;

wire rd_done_0 = rd_done_valid && rd_done_port == 2'd0;
wire rd_done_1 = rd_done_valid && rd_done_port == 2'd1;
wire rd_done_2 = rd_done_valid && rd_done_port == 2'd2;

assign rd_job_id[7:0] = 8'd0;
assign rd_job_attr[2:0] = 3'd0;                    // descriptors: strongly ordered, snooped
assign rd_job_attr[5:3] = data_attr;
assign rd_job_attr[8:6] = 3'd0;
assign rd_job_id[23:16] = 8'd0;

nic_tx #(
    .RAM_AW(RD_RAM_AW),
    .BUF_BASE(RAM_TX_BUF),
    .BUF_DW(TX_BUF_DW),
    .DESC_BASE(RAM_TX_DESC),
    .DESC_CACHE(DESC_CACHE),
    .DESC_BATCH(DESC_BATCH),
    .CTX(TX_FRAMES_IN_FLIGHT),
    .MAX_FRAME(MAX_FRAME_BYTES)
) tx_inst (
    .clk(clk),
    .rst(rst),
    .q_enable(q_enable_reg[0]),
    .q_run(q_run[0]),
    .q_base(q_base_reg[0]),
    .q_mask(q_mask[0]),
    .q_prod(q_prod_reg[0]),
    .rd_a_valid(rd_job_valid[0]),
    .rd_a_ready(rd_job_ready[0]),
    .rd_a_addr(rd_job_addr[0 +: 64]),
    .rd_a_len(rd_job_len[0 +: 16]),
    .rd_a_ram(rd_job_ram[0 +: RD_RAM_AW]),
    .rd_b_valid(rd_job_valid[1]),
    .rd_b_ready(rd_job_ready[1]),
    .rd_b_addr(rd_job_addr[64 +: 64]),
    .rd_b_len(rd_job_len[16 +: 16]),
    .rd_b_ram(rd_job_ram[RD_RAM_AW +: RD_RAM_AW]),
    .rd_b_id(rd_job_id[15:8]),
    .rd_done_a(rd_done_0),
    .rd_done_b(rd_done_1),
    .rd_done_id(rd_done_id),
    .rd_done_status(rd_done_status),
    .desc_rd_addr(tx_desc_rd_addr),
    .desc_rd_data(tx_desc_rd_data),
    .pkt_rd_addr(tx_pkt_rd_addr),
    .pkt_rd_data(tx_pkt_rd_data),
    .m_axis_tdata(tx_mac_tdata),
    .m_axis_tkeep(tx_mac_tkeep),
    .m_axis_tlast(tx_mac_tlast),
    .m_axis_tvalid(tx_mac_tvalid),
    .m_axis_tready(tx_mac_tready),
    .cw_valid(tx_cw_valid),
    .cw_ready(tx_cw_ready),
    .cw_index(tx_cw_index),
    .cw_len(tx_cw_len),
    .cw_phase(tx_cw_phase),
    .cw_done(tx_cw_done),
    .cons_adv(tx_cons_adv),
    .err_valid(tx_err_valid),
    .err_code(tx_err_code),
    .drain(tx_drain),
    .stat_pkt(tx_stat_pkt),
    .stat_bytes(tx_stat_bytes)
);

nic_rx #(
    .KEEP_WIDTH(KEEP_WIDTH),
    .RAM_AW(RD_RAM_AW),
    .DESC_BASE(RAM_RX_DESC),
    .DESC_CACHE(DESC_CACHE),
    .DESC_BATCH(DESC_BATCH),
    .STORE_AW(WR_RAM_AW),
    .FRAMES(RX_FRAMES_STORED),
    .MAX_FRAME(MAX_FRAME_BYTES)
) rx_inst (
    .clk(clk),
    .rst(rst),
    .q_enable(q_enable_reg[1]),
    .q_run(q_run[1]),
    .q_base(q_base_reg[1]),
    .q_mask(q_mask[1]),
    .q_prod(q_prod_reg[1]),
    .s_axis_tdata(loopback ? tx_mac_tdata : s_axis_rx_tdata),
    .s_axis_tkeep(loopback ? tx_mac_tkeep : s_axis_rx_tkeep),
    .s_axis_tlast(loopback ? tx_mac_tlast : s_axis_rx_tlast),
    .s_axis_tvalid(loopback ? tx_mac_tvalid : s_axis_rx_tvalid),
    .s_axis_tready(rx_in_ready),
    .rd_valid(rd_job_valid[2]),
    .rd_ready(rd_job_ready[2]),
    .rd_addr(rd_job_addr[128 +: 64]),
    .rd_len(rd_job_len[32 +: 16]),
    .rd_ram(rd_job_ram[2*RD_RAM_AW +: RD_RAM_AW]),
    .rd_done(rd_done_2),
    .rd_done_status(rd_done_status),
    .desc_rd_addr(rx_desc_rd_addr),
    .desc_rd_data(rx_desc_rd_data),
    .wr_valid(wr_job_valid[0]),
    .wr_ready(wr_job_ready[0]),
    .wr_addr(wr_job_addr[0 +: 64]),
    .wr_len(wr_job_len[0 +: 16]),
    .wr_src(wr_job_src[0 +: WR_RAM_AW]),
    .wr_done(wr_done[0]),
    .src_rd_addr(src_rd_addr),
    .src_rd_data(src_rd_data),
    .cw_valid(rx_cw_valid),
    .cw_ready(rx_cw_ready),
    .cw_index(rx_cw_index),
    .cw_len(rx_cw_len),
    .cw_trunc(rx_cw_trunc),
    .cw_phase(rx_cw_phase),
    .cw_done(rx_cw_done),
    .cons_adv(rx_cons_adv),
    .irq_event(rx_irq_event),
    .err_valid(rx_err_valid),
    .err_code(rx_err_code),
    .drain(rx_drain),
    .stat_pkt(rx_stat_pkt),
    .stat_bytes(rx_stat_bytes),
    .stat_trunc(rx_stat_trunc)
);
assign wr_job_imm_en[0] = 1'b0;
assign wr_job_imm[0 +: 128] = 128'd0;
assign wr_job_attr[2:0] = data_attr;

nic_cpl_wr #(
    .RECORD_BYTES(CPL_BYTES),
    .STATUS_OK(CPL_STATUS_OK[7:0]),
    .STATUS_TRUNC(CPL_STATUS_TRUNC[7:0])
) cpl_wr_inst (
    .clk(clk),
    .rst(rst),
    .tx_cpl_base(q_cpl_base_reg[0]),
    .rx_cpl_base(q_cpl_base_reg[1]),
    .tx_valid(tx_cw_valid),
    .tx_ready(tx_cw_ready),
    .tx_index(tx_cw_index),
    .tx_len(tx_cw_len),
    .tx_phase(tx_cw_phase),
    .tx_done(tx_cw_done),
    .rx_valid(rx_cw_valid),
    .rx_ready(rx_cw_ready),
    .rx_index(rx_cw_index),
    .rx_len(rx_cw_len),
    .rx_trunc(rx_cw_trunc),
    .rx_phase(rx_cw_phase),
    .rx_done(rx_cw_done),
    .wr_valid(wr_job_valid[1]),
    .wr_ready(wr_job_ready[1]),
    .wr_addr(wr_job_addr[64 +: 64]),
    .wr_len(wr_job_len[16 +: 16]),
    .wr_imm(wr_job_imm[128 +: 128]),
    .wr_done(wr_done[1])
);
assign wr_job_imm_en[1] = 1'b1;
assign wr_job_src[WR_RAM_AW +: WR_RAM_AW] = {WR_RAM_AW{1'b0}};
assign wr_job_attr[5:3] = 3'd0;                      // records: no RO (they must not pass the data they report)

/* ---- interrupts: coalesce enabled events, then one MSI-X write (vector 0) ----
   Every message announces something new: the records and errors that reached the link since the previous one. */
// a queue's quarantined tags reaching the limit stops it (live, in q_quar): an error event when it happens
reg  [1:0] quar_full_reg;
wire [1:0] quar_rise = quar_full & ~quar_full_reg;
reg [2:0] ev;  // interrupt causes this cycle
always @* begin
    ev = 3'd0;
    ev[IRQ_TX_BIT] = tx_cons_adv;
    ev[IRQ_RX_BIT] = rx_irq_event;
    ev[IRQ_ERR_BIT] = tx_err_valid || rx_err_valid || quar_rise != 2'b00;
end
reg [1:0]  irq_state_reg, irq_state_next;
reg [31:0] irq_pending_reg, irq_pending_next;   // coalesced events not yet signalled
reg [31:0] irq_timer_reg, irq_timer_next;
reg        msix_pending_next;
reg        irq_wr_valid_reg, irq_wr_valid_next;
wire [31:0] coal_count = coal_count_reg == 32'd0 ? 32'd1 : coal_count_reg;
wire irq_due = irq_pending_reg != 32'd0 && (irq_pending_reg >= coal_count
               || (coal_timer_reg != 32'd0 && irq_timer_reg >= coal_timer_reg));
wire irq_can_send = cfg_msix_enable && !cfg_msix_mask && !msix_ctrl_reg[0];
wire irq_ev = (ev & irq_en_reg[2:0]) != 3'd0;

always @* begin
    irq_state_next = irq_state_reg;
    irq_pending_next = irq_pending_reg;
    irq_timer_next = irq_timer_reg;
    msix_pending_next = msix_pending_reg;
    irq_wr_valid_next = irq_wr_valid_reg;
    if (irq_pending_reg != 32'd0 && irq_timer_reg != 32'hffffffff) begin
        irq_timer_next = irq_timer_reg + 32'd1;
    end
    case (irq_state_reg)
        IRQ_IDLE: begin
            if (irq_due || msix_pending_reg) begin
                if (irq_can_send) begin
                    irq_wr_valid_next = 1'b1;
                    msix_pending_next = 1'b0;
                    irq_state_next = IRQ_REQ;
                end else begin
                    msix_pending_next = 1'b1;
                end
                irq_pending_next = 32'd0;
                irq_timer_next = 32'd0;
            end
        end
        IRQ_REQ: begin
            if (wr_job_ready[2]) begin
                irq_wr_valid_next = 1'b0;
                irq_state_next = IRQ_WAIT;
            end
        end
        IRQ_WAIT: begin
            if (wr_done[2]) irq_state_next = IRQ_IDLE;
        end
        default: irq_state_next = IRQ_IDLE;
    endcase
    // an event counts towards the next interrupt only if its record (or error) reaches the link after the
    // message being sent: events up to the message's own write completing are announced by that message
    if (irq_ev && irq_state_reg == IRQ_IDLE && !(irq_due || msix_pending_reg)) begin
        irq_pending_next = irq_pending_reg + 32'd1;
    end
end

assign wr_job_valid[2] = irq_wr_valid_reg;
assign wr_job_addr[128 +: 64] = {msix_addr_hi_reg, msix_addr_lo_reg};
assign wr_job_len[32 +: 16] = 16'd4;
assign wr_job_imm_en[2] = 1'b1;
assign wr_job_imm[256 +: 128] = {96'd0, msix_data_reg};
assign wr_job_src[2*WR_RAM_AW +: WR_RAM_AW] = {WR_RAM_AW{1'b0}};
assign wr_job_attr[8:6] = 3'd0;

/* ---- register writes and queue state ---- */
wire [15:0] wr_off = reg_wr_addr & 16'hfffc;
wire        wr_is_stat = wr_off >= REG_STAT_TX_PKTS && wr_off < REG_STAT_TX_PKTS + STAT_COUNT*4;
reg         wr_mapped;
always @* begin
    case (wr_off)
        REG_ID, REG_VERSION, REG_CTRL, REG_STATUS, REG_IRQ_ENABLE, REG_IRQ_STATUS, REG_IRQ_COAL_COUNT,
        REG_IRQ_COAL_TIMER, REG_CPL_TIMEOUT, REG_SCRATCH, REG_LINK_PARAMS, REG_DMA_TAGS, REG_DEV_CTL,
        REG_DMA_CREDITS, REG_DMA_CREDITS_USED, REG_TAG_HOLD,
        REG_TXQ_BASE_LO, REG_TXQ_BASE_HI, REG_TXQ_SIZE, REG_TXQ_PROD, REG_TXQ_CONS, REG_TXQ_CPL_BASE_LO,
        REG_TXQ_CPL_BASE_HI, REG_TXQ_CTRL, REG_TXQ_STATUS,
        REG_RXQ_BASE_LO, REG_RXQ_BASE_HI, REG_RXQ_SIZE, REG_RXQ_PROD, REG_RXQ_CONS, REG_RXQ_CPL_BASE_LO,
        REG_RXQ_CPL_BASE_HI, REG_RXQ_CTRL, REG_RXQ_STATUS,
        REG_MSIX_TABLE, REG_MSIX_TABLE + 4, REG_MSIX_TABLE + 8, REG_MSIX_TABLE + 12, REG_MSIX_PBA: wr_mapped = 1'b1;
        default: wr_mapped = wr_is_stat;   // statistics are read-only: writes ignored, not counted as unmapped
    endcase
end

wire [31:0] cred_wr = apply_strb({4'd0, cpld_limit_reg, 7'd0, cplh_limit_reg}, reg_wr_data, reg_wr_strb);

/* ---- statistics ---- */
reg        stat_inc [0:STAT_COUNT-1];
reg [31:0] stat_add [0:STAT_COUNT-1];
always @* begin
    for (i = 0; i < STAT_COUNT; i = i + 1) begin
        stat_inc[i] = 1'b0;
        stat_add[i] = 32'd0;
    end
    stat_inc[ST_TX_PKTS] = tx_stat_pkt;
    stat_add[ST_TX_BYTES] = {16'd0, tx_stat_bytes};
    stat_inc[ST_RX_PKTS] = rx_stat_pkt;
    stat_add[ST_RX_BYTES] = {16'd0, rx_stat_bytes};
    stat_inc[ST_RX_TRUNC] = rx_stat_trunc;
    stat_inc[ST_TLP_MEM_RD] = stat_mem_rd;
    stat_inc[ST_TLP_MEM_WR] = stat_mem_wr;
    stat_inc[ST_TLP_CPL_TX] = stat_cpl_tx;
    stat_inc[ST_TLP_REQ_RX] = stat_req_rx;
    stat_inc[ST_TLP_CPL_RX] = stat_cpl_rx;
    stat_inc[ST_CPL_TIMEOUTS] = stat_timeout;
    stat_inc[ST_UNEXP_CPL] = stat_unexp_cpl;
    stat_inc[ST_UR_SENT] = stat_ur_sent;
    stat_inc[ST_MMIO_DROPPED] = stat_mmio_dropped;
    stat_inc[ST_IRQS] = irq_state_reg == IRQ_WAIT && wr_done[2];
    stat_inc[ST_DMA_ERRORS] = tx_err_valid || rx_err_valid;
    stat_add[ST_DMA_ERRORS] = {31'd0, tx_err_valid && rx_err_valid};
    stat_inc[ST_TAG_EXHAUSTED] = (tx_err_valid && tx_err_code == QERR_QUAR) || (rx_err_valid && rx_err_code == QERR_QUAR)
                                 || quar_rise != 2'b00;
    stat_inc[ST_QUAR_RELEASED] = stat_quar_release;
    stat_inc[ST_CREDIT_STALLS] = stat_credit_stall;
    stat_inc[ST_TAG_STALLS] = stat_tag_stall;
    stat_add[ST_RD_BYTES] = {19'd0, stat_rd_bytes};
    stat_add[ST_WR_BYTES] = {19'd0, stat_wr_bytes};
    if (reg_rd_en && !rd_mapped) stat_inc[ST_MMIO_UNMAPPED] = 1'b1;
    if (reg_wr_en && !wr_mapped) stat_inc[ST_MMIO_UNMAPPED] = 1'b1;
end

// a queue reset (enable bit written 0): indices and errors cleared, timed-out tags old enough freed
wire q_ctrl_wr = reg_wr_en && (wr_off == REG_TXQ_CTRL || wr_off == REG_RXQ_CTRL) && reg_wr_strb[0];
wire q_ctrl_q = reg_wr_addr[9];
assign quar_release[0] = q_ctrl_wr && !q_ctrl_q && !reg_wr_data[QCTRL_ENABLE_BIT];
assign quar_release[1] = q_ctrl_wr && q_ctrl_q && !reg_wr_data[QCTRL_ENABLE_BIT];

wire        q_err_valid [0:1];
wire [1:0]  q_err_code  [0:1];
wire        q_cons_adv  [0:1];
assign q_err_valid[0] = tx_err_valid;
assign q_err_valid[1] = rx_err_valid;
assign q_err_code[0] = tx_err_code;
assign q_err_code[1] = rx_err_code;
assign q_cons_adv[0] = tx_cons_adv;
assign q_cons_adv[1] = rx_cons_adv;

integer q;
initial quar_full_reg = 2'b00;

always @(posedge clk) begin
    quar_full_reg <= quar_full;
    irq_state_reg <= irq_state_next;
    irq_pending_reg <= irq_pending_next;
    irq_timer_reg <= irq_timer_next;
    msix_pending_reg <= msix_pending_next;
    irq_wr_valid_reg <= irq_wr_valid_next;
    irq_status_reg <= (irq_status_reg & ~((reg_wr_en && wr_off == REG_IRQ_STATUS)
                       ? apply_strb(32'd0, reg_wr_data, reg_wr_strb) : 32'd0)) | {29'd0, ev};

    for (q = 0; q < 2; q = q + 1) begin
        if (q_cons_adv[q] && q_enable_reg[q]) q_cons_reg[q] <= (q_cons_reg[q] + 16'd1) & q_mask[q];
        if (q_err_valid[q]) begin
            case (q_err_code[q])
                QERR_DESC:    q_desc_err_reg[q] <= 1'b1;
                QERR_DMA:     q_dma_err_reg[q] <= 1'b1;
                QERR_TIMEOUT: q_timeout_reg[q] <= 1'b1;
                default:      q_quar_reg[q] <= 1'b1;
            endcase
        end
    end

    if (reg_wr_en) begin
        case (wr_off)
            REG_CTRL:            ctrl_reg <= apply_strb(ctrl_reg, reg_wr_data, reg_wr_strb) & 32'h7;
            REG_IRQ_ENABLE:      irq_en_reg <= apply_strb(irq_en_reg, reg_wr_data, reg_wr_strb);
            REG_IRQ_COAL_COUNT:  coal_count_reg <= apply_strb(coal_count_reg, reg_wr_data, reg_wr_strb);
            REG_IRQ_COAL_TIMER:  coal_timer_reg <= apply_strb(coal_timer_reg, reg_wr_data, reg_wr_strb);
            REG_CPL_TIMEOUT:     cpl_timeout_reg <= apply_strb(cpl_timeout_reg, reg_wr_data, reg_wr_strb);
            REG_TAG_HOLD:        tag_hold_reg <= apply_strb(tag_hold_reg, reg_wr_data, reg_wr_strb);
            REG_SCRATCH:         scratch_reg <= apply_strb(scratch_reg, reg_wr_data, reg_wr_strb);
            REG_DMA_CREDITS: begin
                cplh_limit_reg <= cred_wr[8:0];
                cpld_limit_reg <= cred_wr[27:16];
            end
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
            REG_MSIX_TABLE:      msix_addr_lo_reg <= apply_strb(msix_addr_lo_reg, reg_wr_data, reg_wr_strb) & 32'hfffffffc;
            REG_MSIX_TABLE + 4:  msix_addr_hi_reg <= apply_strb(msix_addr_hi_reg, reg_wr_data, reg_wr_strb);
            REG_MSIX_TABLE + 8:  msix_data_reg <= apply_strb(msix_data_reg, reg_wr_data, reg_wr_strb);
            REG_MSIX_TABLE + 12: msix_ctrl_reg <= apply_strb(msix_ctrl_reg, reg_wr_data, reg_wr_strb) & 32'd1;
            default: begin
                // read-only, write-1-to-clear (IRQ_STATUS, above) and unmapped offsets: nothing to store
            end
        endcase
        if (q_ctrl_wr) begin
            // enable only with a valid size; disable resets the queue (the engine drains, then starts afresh)
            if (reg_wr_data[QCTRL_ENABLE_BIT]) begin
                q_enable_reg[q_ctrl_q] <= !q_size_err[q_ctrl_q];
            end else begin
                q_enable_reg[q_ctrl_q] <= 1'b0;
                q_prod_reg[q_ctrl_q] <= 16'd0;
                q_cons_reg[q_ctrl_q] <= 16'd0;
                q_dma_err_reg[q_ctrl_q] <= 1'b0;
                q_timeout_reg[q_ctrl_q] <= 1'b0;
                q_desc_err_reg[q_ctrl_q] <= 1'b0;
                q_quar_reg[q_ctrl_q] <= 1'b0;
            end
        end
    end

    for (i = 0; i < STAT_COUNT; i = i + 1) begin
        stat_reg[i] <= stat_reg[i] + {31'd0, stat_inc[i]} + stat_add[i];
    end

    if (rst) begin
        quar_full_reg <= 2'b00;
        irq_state_reg <= IRQ_IDLE;
        irq_pending_reg <= 32'd0;
        irq_timer_reg <= 32'd0;
        msix_pending_reg <= 1'b0;
        irq_wr_valid_reg <= 1'b0;
        ctrl_reg <= 32'd0;
        irq_en_reg <= 32'd0;
        irq_status_reg <= 32'd0;
        for (i = 0; i < STAT_COUNT; i = i + 1) begin
            stat_reg[i] <= 32'd0;
        end
        for (q = 0; q < 2; q = q + 1) begin
            q_enable_reg[q] <= 1'b0;
            q_prod_reg[q] <= 16'd0;
            q_cons_reg[q] <= 16'd0;
            q_dma_err_reg[q] <= 1'b0;
            q_timeout_reg[q] <= 1'b0;
            q_desc_err_reg[q] <= 1'b0;
            q_quar_reg[q] <= 1'b0;
        end
    end
end

wire unused_ok = &{1'b0, stat_off[15:7], stat_off[1:0], stat_rd_err, cfg_max_payload, cred_wr[31:28], cred_wr[15:9]};

endmodule

`resetall
