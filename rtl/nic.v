`resetall
`timescale 1ns / 1ps
`default_nettype none

/* DMA NIC on the Xilinx UltraScale+ PCIe hard IP user interface (CQ/CC completer, RQ/RC requester) */
module nic #
(
    // PCIe user interface data width (64, 128 or 256)
    parameter AXIS_PCIE_DATA_WIDTH = 64,
    // DWORD lanes per beat
    parameter AXIS_PCIE_KEEP_WIDTH = AXIS_PCIE_DATA_WIDTH/32,
    // tuser widths of the UltraScale+ interfaces (data width < 512)
    parameter AXIS_PCIE_RQ_USER_WIDTH = 62,
    parameter AXIS_PCIE_RC_USER_WIDTH = 75,
    parameter AXIS_PCIE_CQ_USER_WIDTH = 88,
    parameter AXIS_PCIE_CC_USER_WIDTH = 33,
    // default DMA read completion timeout in user_clk cycles
    parameter CPL_TIMEOUT_DEFAULT = 250000
)
(
    /* clock and reset from the hard IP */
    input  wire                                 user_clk,
    input  wire                                 user_reset,
    input  wire                                 user_lnk_up,

    /* completer request */
    input  wire [AXIS_PCIE_DATA_WIDTH-1:0]      s_axis_cq_tdata,
    input  wire [AXIS_PCIE_KEEP_WIDTH-1:0]      s_axis_cq_tkeep,
    input  wire                                 s_axis_cq_tlast,
    input  wire [AXIS_PCIE_CQ_USER_WIDTH-1:0]   s_axis_cq_tuser,
    input  wire                                 s_axis_cq_tvalid,
    output wire                                 s_axis_cq_tready,
    output wire [1:0]                           pcie_cq_np_req,

    /* completer completion */
    output wire [AXIS_PCIE_DATA_WIDTH-1:0]      m_axis_cc_tdata,
    output wire [AXIS_PCIE_KEEP_WIDTH-1:0]      m_axis_cc_tkeep,
    output wire                                 m_axis_cc_tlast,
    output wire [AXIS_PCIE_CC_USER_WIDTH-1:0]   m_axis_cc_tuser,
    output wire                                 m_axis_cc_tvalid,
    input  wire                                 m_axis_cc_tready,

    /* requester request */
    output wire [AXIS_PCIE_DATA_WIDTH-1:0]      m_axis_rq_tdata,
    output wire [AXIS_PCIE_KEEP_WIDTH-1:0]      m_axis_rq_tkeep,
    output wire                                 m_axis_rq_tlast,
    output wire [AXIS_PCIE_RQ_USER_WIDTH-1:0]   m_axis_rq_tuser,
    output wire                                 m_axis_rq_tvalid,
    input  wire                                 m_axis_rq_tready,

    /* requester completion */
    input  wire [AXIS_PCIE_DATA_WIDTH-1:0]      s_axis_rc_tdata,
    input  wire [AXIS_PCIE_KEEP_WIDTH-1:0]      s_axis_rc_tkeep,
    input  wire                                 s_axis_rc_tlast,
    input  wire [AXIS_PCIE_RC_USER_WIDTH-1:0]   s_axis_rc_tuser,
    input  wire                                 s_axis_rc_tvalid,
    output wire                                 s_axis_rc_tready,

    /* configuration status */
    input  wire [1:0]                           cfg_max_payload,
    input  wire [2:0]                           cfg_max_read_req,
    input  wire [3:0]                           cfg_rcb_status,
    input  wire [15:0]                          cfg_function_status,
    input  wire [3:0]                           cfg_interrupt_msix_enable,
    input  wire [3:0]                           cfg_interrupt_msix_mask,

    /* MAC TX */
    output wire [63:0]                          m_axis_tx_tdata,
    output wire [7:0]                           m_axis_tx_tkeep,
    output wire                                 m_axis_tx_tlast,
    output wire                                 m_axis_tx_tvalid,
    input  wire                                 m_axis_tx_tready,

    /* MAC RX */
    input  wire [63:0]                          s_axis_rx_tdata,
    input  wire [7:0]                           s_axis_rx_tkeep,
    input  wire                                 s_axis_rx_tlast,
    input  wire                                 s_axis_rx_tvalid,
    output wire                                 s_axis_rx_tready
);

localparam KW = AXIS_PCIE_KEEP_WIDTH;
localparam RD_RAM_AW = 13;
localparam WR_RAM_AW = 12;
localparam REG_AW = 16;

initial begin
    if (AXIS_PCIE_DATA_WIDTH != 64 && AXIS_PCIE_DATA_WIDTH != 128 && AXIS_PCIE_DATA_WIDTH != 256) begin
        $error("Error: AXIS_PCIE_DATA_WIDTH must be 64, 128 or 256 (instance %m)");
        $finish;
    end
end

wire rst = user_reset;

// one non-posted request credit is always available: requests are served in order
assign pcie_cq_np_req = 2'b01;

wire                 reg_wr_en;
wire [REG_AW-1:0]    reg_wr_addr;
wire [31:0]          reg_wr_data;
wire [3:0]           reg_wr_strb;
wire                 reg_rd_en;
wire [REG_AW-1:0]    reg_rd_addr;
wire [31:0]          reg_rd_data;

wire [1:0]           rd_req_valid, rd_req_ready, rd_done;
wire [2*64-1:0]      rd_req_addr;
wire [2*16-1:0]      rd_req_len;
wire [2*RD_RAM_AW-1:0] rd_req_ram;
wire [3:0]           rd_done_status;
wire [KW-1:0]        ram_wr_en;
wire [KW*RD_RAM_AW-1:0] ram_wr_addr;
wire [KW*32-1:0]     ram_wr_data;
wire [2:0]           wr_req_valid, wr_req_ready, wr_req_imm_en, wr_done;
wire [3*64-1:0]      wr_req_addr;
wire [3*16-1:0]      wr_req_len;
wire [3*128-1:0]     wr_req_imm;
wire [3*WR_RAM_AW-1:0] wr_req_ram;
wire [KW*WR_RAM_AW-1:0] src_rd_addr;
wire [KW*32-1:0]     src_rd_data;
wire [31:0]          cpl_timeout;

wire stat_mem_rd, stat_mem_wr, stat_cpl_tx, stat_req_rx, stat_cpl_rx, stat_unexp_cpl;
wire stat_timeout, stat_ur_sent, stat_mmio_dropped, stat_rd_err;
wire [7:0] tags_in_flight, tags_quarantined;

nic_mmio #(
    .DATA_WIDTH(AXIS_PCIE_DATA_WIDTH),
    .KEEP_WIDTH(KW),
    .CQ_USER_WIDTH(AXIS_PCIE_CQ_USER_WIDTH),
    .CC_USER_WIDTH(AXIS_PCIE_CC_USER_WIDTH),
    .REG_ADDR_WIDTH(REG_AW)
) mmio_inst (
    .clk(user_clk),
    .rst(rst),
    .s_axis_cq_tdata(s_axis_cq_tdata),
    .s_axis_cq_tkeep(s_axis_cq_tkeep),
    .s_axis_cq_tlast(s_axis_cq_tlast),
    .s_axis_cq_tuser(s_axis_cq_tuser),
    .s_axis_cq_tvalid(s_axis_cq_tvalid),
    .s_axis_cq_tready(s_axis_cq_tready),
    .m_axis_cc_tdata(m_axis_cc_tdata),
    .m_axis_cc_tkeep(m_axis_cc_tkeep),
    .m_axis_cc_tlast(m_axis_cc_tlast),
    .m_axis_cc_tuser(m_axis_cc_tuser),
    .m_axis_cc_tvalid(m_axis_cc_tvalid),
    .m_axis_cc_tready(m_axis_cc_tready),
    .reg_wr_en(reg_wr_en),
    .reg_wr_addr(reg_wr_addr),
    .reg_wr_data(reg_wr_data),
    .reg_wr_strb(reg_wr_strb),
    .reg_rd_en(reg_rd_en),
    .reg_rd_addr(reg_rd_addr),
    .reg_rd_data(reg_rd_data),
    .stat_req_rx(stat_req_rx),
    .stat_cpl_tx(stat_cpl_tx),
    .stat_ur_sent(stat_ur_sent),
    .stat_dropped(stat_mmio_dropped)
);

nic_dma #(
    .DATA_WIDTH(AXIS_PCIE_DATA_WIDTH),
    .KEEP_WIDTH(KW),
    .RQ_USER_WIDTH(AXIS_PCIE_RQ_USER_WIDTH),
    .RC_USER_WIDTH(AXIS_PCIE_RC_USER_WIDTH),
    .RD_RAM_AW(RD_RAM_AW),
    .WR_RAM_AW(WR_RAM_AW)
) dma_inst (
    .clk(user_clk),
    .rst(rst),
    .cfg_max_payload(cfg_max_payload),
    .cfg_max_read_req(cfg_max_read_req),
    .cpl_timeout(cpl_timeout),
    .m_axis_rq_tdata(m_axis_rq_tdata),
    .m_axis_rq_tkeep(m_axis_rq_tkeep),
    .m_axis_rq_tlast(m_axis_rq_tlast),
    .m_axis_rq_tuser(m_axis_rq_tuser),
    .m_axis_rq_tvalid(m_axis_rq_tvalid),
    .m_axis_rq_tready(m_axis_rq_tready),
    .s_axis_rc_tdata(s_axis_rc_tdata),
    .s_axis_rc_tkeep(s_axis_rc_tkeep),
    .s_axis_rc_tlast(s_axis_rc_tlast),
    .s_axis_rc_tuser(s_axis_rc_tuser),
    .s_axis_rc_tvalid(s_axis_rc_tvalid),
    .s_axis_rc_tready(s_axis_rc_tready),
    .rd_req_valid(rd_req_valid),
    .rd_req_ready(rd_req_ready),
    .rd_req_addr(rd_req_addr),
    .rd_req_len(rd_req_len),
    .rd_req_ram(rd_req_ram),
    .rd_done(rd_done),
    .rd_done_status(rd_done_status),
    .ram_wr_en(ram_wr_en),
    .ram_wr_addr(ram_wr_addr),
    .ram_wr_data(ram_wr_data),
    .wr_req_valid(wr_req_valid),
    .wr_req_ready(wr_req_ready),
    .wr_req_addr(wr_req_addr),
    .wr_req_len(wr_req_len),
    .wr_req_imm_en(wr_req_imm_en),
    .wr_req_imm(wr_req_imm),
    .wr_req_ram(wr_req_ram),
    .wr_done(wr_done),
    .src_rd_addr(src_rd_addr),
    .src_rd_data(src_rd_data),
    .stat_mem_rd(stat_mem_rd),
    .stat_mem_wr(stat_mem_wr),
    .stat_cpl_rx(stat_cpl_rx),
    .stat_unexp_cpl(stat_unexp_cpl),
    .stat_timeout(stat_timeout),
    .stat_rd_err(stat_rd_err),
    .tags_in_flight(tags_in_flight),
    .tags_quarantined(tags_quarantined)
);

nic_core #(
    .KEEP_WIDTH(KW),
    .REG_ADDR_WIDTH(REG_AW),
    .RD_RAM_AW(RD_RAM_AW),
    .WR_RAM_AW(WR_RAM_AW),
    .CPL_TIMEOUT_DEFAULT(CPL_TIMEOUT_DEFAULT)
) core_inst (
    .clk(user_clk),
    .rst(rst),
    .reg_wr_en(reg_wr_en),
    .reg_wr_addr(reg_wr_addr),
    .reg_wr_data(reg_wr_data),
    .reg_wr_strb(reg_wr_strb),
    .reg_rd_en(reg_rd_en),
    .reg_rd_addr(reg_rd_addr),
    .reg_rd_data(reg_rd_data),
    .cfg_max_payload(cfg_max_payload),
    .cfg_max_read_req(cfg_max_read_req),
    .cfg_rcb_128(cfg_rcb_status[0]),
    .cfg_bus_master(cfg_function_status[2]),
    .cfg_msix_enable(cfg_interrupt_msix_enable[0]),
    .cfg_msix_mask(cfg_interrupt_msix_mask[0]),
    .cpl_timeout(cpl_timeout),
    .rd_req_valid(rd_req_valid),
    .rd_req_ready(rd_req_ready),
    .rd_req_addr(rd_req_addr),
    .rd_req_len(rd_req_len),
    .rd_req_ram(rd_req_ram),
    .rd_done(rd_done),
    .rd_done_status(rd_done_status),
    .ram_wr_en(ram_wr_en),
    .ram_wr_addr(ram_wr_addr),
    .ram_wr_data(ram_wr_data),
    .wr_req_valid(wr_req_valid),
    .wr_req_ready(wr_req_ready),
    .wr_req_addr(wr_req_addr),
    .wr_req_len(wr_req_len),
    .wr_req_imm_en(wr_req_imm_en),
    .wr_req_imm(wr_req_imm),
    .wr_req_ram(wr_req_ram),
    .wr_done(wr_done),
    .src_rd_addr(src_rd_addr),
    .src_rd_data(src_rd_data),
    .m_axis_tx_tdata(m_axis_tx_tdata),
    .m_axis_tx_tkeep(m_axis_tx_tkeep),
    .m_axis_tx_tlast(m_axis_tx_tlast),
    .m_axis_tx_tvalid(m_axis_tx_tvalid),
    .m_axis_tx_tready(m_axis_tx_tready),
    .s_axis_rx_tdata(s_axis_rx_tdata),
    .s_axis_rx_tkeep(s_axis_rx_tkeep),
    .s_axis_rx_tlast(s_axis_rx_tlast),
    .s_axis_rx_tvalid(s_axis_rx_tvalid),
    .s_axis_rx_tready(s_axis_rx_tready),
    .stat_mem_rd(stat_mem_rd),
    .stat_mem_wr(stat_mem_wr),
    .stat_cpl_tx(stat_cpl_tx),
    .stat_req_rx(stat_req_rx),
    .stat_cpl_rx(stat_cpl_rx),
    .stat_unexp_cpl(stat_unexp_cpl),
    .stat_timeout(stat_timeout),
    .stat_ur_sent(stat_ur_sent),
    .stat_mmio_dropped(stat_mmio_dropped),
    .tags_in_flight(tags_in_flight),
    .tags_quarantined(tags_quarantined)
);

wire unused_ok = &{1'b0, user_lnk_up, cfg_rcb_status[3:1], cfg_function_status[15:3], cfg_function_status[1:0],
                   cfg_interrupt_msix_enable[3:1], cfg_interrupt_msix_mask[3:1], stat_rd_err};

endmodule

`resetall
