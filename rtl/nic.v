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

    /* configuration management (Device Control read back) */
    output wire [9:0]                           cfg_mgmt_addr,
    output wire [7:0]                           cfg_mgmt_function_number,
    output wire                                 cfg_mgmt_write,
    output wire [31:0]                          cfg_mgmt_write_data,
    output wire [3:0]                           cfg_mgmt_byte_enable,
    output wire                                 cfg_mgmt_read,
    input  wire [31:0]                          cfg_mgmt_read_data,
    input  wire                                 cfg_mgmt_read_write_done,

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
localparam RD_RAM_AW = 15;   // TX packet buffer (64 KB) + descriptor caches
localparam WR_RAM_AW = 13;   // RX frame store (32 KB)
localparam REG_AW = 16;

initial begin
    if (AXIS_PCIE_DATA_WIDTH != 64 && AXIS_PCIE_DATA_WIDTH != 128 && AXIS_PCIE_DATA_WIDTH != 256) begin
        $error("Error: AXIS_PCIE_DATA_WIDTH must be 64, 128 or 256 (instance %m)");
        $finish;
    end
end

wire rst = user_reset;
wire bus_master = cfg_function_status[2];

// one non-posted request credit is always available: requests are served in order
assign pcie_cq_np_req = 2'b01;

wire                 reg_wr_en;
wire [REG_AW-1:0]    reg_wr_addr;
wire [31:0]          reg_wr_data;
wire [3:0]           reg_wr_strb;
wire                 reg_rd_en;
wire [REG_AW-1:0]    reg_rd_addr;
wire [31:0]          reg_rd_data;

wire ext_tag_enable, ro_enable, ns_enable;

wire [31:0]          cpl_timeout, tag_hold;
wire [8:0]           cplh_limit, cplh_used;
wire [11:0]          cpld_limit, cpld_used;
wire [2:0]           rd_job_valid, rd_job_ready;
wire [3*64-1:0]      rd_job_addr;
wire [3*16-1:0]      rd_job_len;
wire [3*RD_RAM_AW-1:0] rd_job_ram;
wire [3*8-1:0]       rd_job_id;
wire [3*3-1:0]       rd_job_attr;
wire                 rd_done_valid;
wire [1:0]           rd_done_port, rd_done_status;
wire [7:0]           rd_done_id;
wire [1:0]           quar_release, quar_full, release_busy;
wire [8:0]           tags_in_flight, tags_quarantined, tag_limit;
wire [KW-1:0]        ram_wr_en;
wire [KW*RD_RAM_AW-1:0] ram_wr_addr;
wire [KW*32-1:0]     ram_wr_data;

wire [2:0]           wr_job_valid, wr_job_ready, wr_job_imm_en, wr_done;
wire [3*64-1:0]      wr_job_addr;
wire [3*16-1:0]      wr_job_len;
wire [3*128-1:0]     wr_job_imm;
wire [3*WR_RAM_AW-1:0] wr_job_src;
wire [3*3-1:0]       wr_job_attr;
wire [KW*WR_RAM_AW-1:0] src_rd_addr;
wire [KW*32-1:0]     src_rd_data;

wire        rd_tlp_valid, rd_tlp_ready;
wire [63:0] rd_tlp_addr;
wire [10:0] rd_tlp_dw;
wire [3:0]  rd_tlp_first_be, rd_tlp_last_be;
wire [7:0]  rd_tlp_tag;
wire [2:0]  rd_tlp_attr;
wire        wr_tlp_valid, wr_tlp_ready, wr_tlp_imm_en, wr_tlp_last;
wire [63:0] wr_tlp_addr;
wire [10:0] wr_tlp_dw;
wire [3:0]  wr_tlp_first_be, wr_tlp_last_be;
wire [2:0]  wr_tlp_attr;
wire [127:0] wr_tlp_imm;
wire [WR_RAM_AW-1:0] wr_tlp_src;
wire [1:0]  wr_tlp_port;
wire        wr_sent_valid, wr_sent_last;
wire [1:0]  wr_sent_port;

wire stat_mem_rd, stat_mem_wr, stat_cpl_tx, stat_req_rx, stat_cpl_rx, stat_unexp_cpl;
wire stat_timeout, stat_ur_sent, stat_mmio_dropped, stat_rd_err;
wire stat_credit_stall, stat_tag_stall, stat_quar_release;
wire [12:0] stat_rd_bytes, stat_wr_bytes;

nic_cfg cfg_inst (
    .clk(user_clk),
    .rst(rst),
    .cfg_mgmt_addr(cfg_mgmt_addr),
    .cfg_mgmt_function_number(cfg_mgmt_function_number),
    .cfg_mgmt_write(cfg_mgmt_write),
    .cfg_mgmt_write_data(cfg_mgmt_write_data),
    .cfg_mgmt_byte_enable(cfg_mgmt_byte_enable),
    .cfg_mgmt_read(cfg_mgmt_read),
    .cfg_mgmt_read_data(cfg_mgmt_read_data),
    .cfg_mgmt_read_write_done(cfg_mgmt_read_write_done),
    .ext_tag_enable(ext_tag_enable),
    .relaxed_ordering_enable(ro_enable),
    .no_snoop_enable(ns_enable)
);

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

nic_dma_rd #(
    .DATA_WIDTH(AXIS_PCIE_DATA_WIDTH),
    .KEEP_WIDTH(KW),
    .RC_USER_WIDTH(AXIS_PCIE_RC_USER_WIDTH),
    .RAM_AW(RD_RAM_AW),
    .PORT_QUEUE(3'b100)
) dma_rd_inst (
    .clk(user_clk),
    .rst(rst),
    .cfg_max_read_req(cfg_max_read_req),
    .cfg_rcb_128(cfg_rcb_status[0]),
    .ext_tag_enable(ext_tag_enable),
    .bus_master(bus_master),
    .cpl_timeout(cpl_timeout),
    .tag_hold(tag_hold),
    .cplh_limit(cplh_limit),
    .cpld_limit(cpld_limit),
    .s_job_valid(rd_job_valid),
    .s_job_ready(rd_job_ready),
    .s_job_addr(rd_job_addr),
    .s_job_len(rd_job_len),
    .s_job_ram(rd_job_ram),
    .s_job_id(rd_job_id),
    .s_job_attr(rd_job_attr),
    .m_done_valid(rd_done_valid),
    .m_done_port(rd_done_port),
    .m_done_id(rd_done_id),
    .m_done_status(rd_done_status),
    .quar_release(quar_release),
    .m_tlp_valid(rd_tlp_valid),
    .m_tlp_ready(rd_tlp_ready),
    .m_tlp_addr(rd_tlp_addr),
    .m_tlp_dw(rd_tlp_dw),
    .m_tlp_first_be(rd_tlp_first_be),
    .m_tlp_last_be(rd_tlp_last_be),
    .m_tlp_tag(rd_tlp_tag),
    .m_tlp_attr(rd_tlp_attr),
    .s_axis_rc_tdata(s_axis_rc_tdata),
    .s_axis_rc_tkeep(s_axis_rc_tkeep),
    .s_axis_rc_tlast(s_axis_rc_tlast),
    .s_axis_rc_tuser(s_axis_rc_tuser),
    .s_axis_rc_tvalid(s_axis_rc_tvalid),
    .s_axis_rc_tready(s_axis_rc_tready),
    .ram_wr_en(ram_wr_en),
    .ram_wr_addr(ram_wr_addr),
    .ram_wr_data(ram_wr_data),
    .tags_in_flight(tags_in_flight),
    .tags_quarantined(tags_quarantined),
    .tag_limit(tag_limit),
    .quar_full(quar_full),
    .release_busy(release_busy),
    .cplh_used(cplh_used),
    .cpld_used(cpld_used),
    .stat_mem_rd(stat_mem_rd),
    .stat_rd_bytes(stat_rd_bytes),
    .stat_cpl_rx(stat_cpl_rx),
    .stat_unexp_cpl(stat_unexp_cpl),
    .stat_timeout(stat_timeout),
    .stat_rd_err(stat_rd_err),
    .stat_credit_stall(stat_credit_stall),
    .stat_tag_stall(stat_tag_stall),
    .stat_quar_release(stat_quar_release)
);

nic_dma_wr #(
    .SRC_AW(WR_RAM_AW)
) dma_wr_inst (
    .clk(user_clk),
    .rst(rst),
    .cfg_max_payload(cfg_max_payload),
    .bus_master(bus_master),
    .s_job_valid(wr_job_valid),
    .s_job_ready(wr_job_ready),
    .s_job_addr(wr_job_addr),
    .s_job_len(wr_job_len),
    .s_job_imm_en(wr_job_imm_en),
    .s_job_imm(wr_job_imm),
    .s_job_src(wr_job_src),
    .s_job_attr(wr_job_attr),
    .m_done(wr_done),
    .m_tlp_valid(wr_tlp_valid),
    .m_tlp_ready(wr_tlp_ready),
    .m_tlp_addr(wr_tlp_addr),
    .m_tlp_dw(wr_tlp_dw),
    .m_tlp_first_be(wr_tlp_first_be),
    .m_tlp_last_be(wr_tlp_last_be),
    .m_tlp_attr(wr_tlp_attr),
    .m_tlp_imm_en(wr_tlp_imm_en),
    .m_tlp_imm(wr_tlp_imm),
    .m_tlp_src(wr_tlp_src),
    .m_tlp_last(wr_tlp_last),
    .m_tlp_port(wr_tlp_port),
    .s_sent_valid(wr_sent_valid),
    .s_sent_last(wr_sent_last),
    .s_sent_port(wr_sent_port),
    .stat_mem_wr(stat_mem_wr),
    .stat_wr_bytes(stat_wr_bytes)
);

nic_rq_tx #(
    .DATA_WIDTH(AXIS_PCIE_DATA_WIDTH),
    .KEEP_WIDTH(KW),
    .RQ_USER_WIDTH(AXIS_PCIE_RQ_USER_WIDTH),
    .SRC_AW(WR_RAM_AW)
) rq_inst (
    .clk(user_clk),
    .rst(rst),
    .s_rd_valid(rd_tlp_valid),
    .s_rd_ready(rd_tlp_ready),
    .s_rd_addr(rd_tlp_addr),
    .s_rd_dw(rd_tlp_dw),
    .s_rd_first_be(rd_tlp_first_be),
    .s_rd_last_be(rd_tlp_last_be),
    .s_rd_tag(rd_tlp_tag),
    .s_rd_attr(rd_tlp_attr),
    .s_wr_valid(wr_tlp_valid),
    .s_wr_ready(wr_tlp_ready),
    .s_wr_addr(wr_tlp_addr),
    .s_wr_dw(wr_tlp_dw),
    .s_wr_first_be(wr_tlp_first_be),
    .s_wr_last_be(wr_tlp_last_be),
    .s_wr_attr(wr_tlp_attr),
    .s_wr_imm_en(wr_tlp_imm_en),
    .s_wr_imm(wr_tlp_imm),
    .s_wr_src(wr_tlp_src),
    .s_wr_last(wr_tlp_last),
    .s_wr_port(wr_tlp_port),
    .m_wr_sent_valid(wr_sent_valid),
    .m_wr_sent_last(wr_sent_last),
    .m_wr_sent_port(wr_sent_port),
    .src_rd_addr(src_rd_addr),
    .src_rd_data(src_rd_data),
    .m_axis_rq_tdata(m_axis_rq_tdata),
    .m_axis_rq_tkeep(m_axis_rq_tkeep),
    .m_axis_rq_tlast(m_axis_rq_tlast),
    .m_axis_rq_tuser(m_axis_rq_tuser),
    .m_axis_rq_tvalid(m_axis_rq_tvalid),
    .m_axis_rq_tready(m_axis_rq_tready)
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
    .cfg_bus_master(bus_master),
    .cfg_msix_enable(cfg_interrupt_msix_enable[0]),
    .cfg_msix_mask(cfg_interrupt_msix_mask[0]),
    .cfg_ext_tag_enable(ext_tag_enable),
    .cfg_ro_enable(ro_enable),
    .cfg_ns_enable(ns_enable),
    .cpl_timeout(cpl_timeout),
    .tag_hold(tag_hold),
    .cplh_limit(cplh_limit),
    .cpld_limit(cpld_limit),
    .rd_job_valid(rd_job_valid),
    .rd_job_ready(rd_job_ready),
    .rd_job_addr(rd_job_addr),
    .rd_job_len(rd_job_len),
    .rd_job_ram(rd_job_ram),
    .rd_job_id(rd_job_id),
    .rd_job_attr(rd_job_attr),
    .rd_done_valid(rd_done_valid),
    .rd_done_port(rd_done_port),
    .rd_done_id(rd_done_id),
    .rd_done_status(rd_done_status),
    .quar_release(quar_release),
    .tags_in_flight(tags_in_flight),
    .tags_quarantined(tags_quarantined),
    .tag_limit(tag_limit),
    .quar_full(quar_full),
    .release_busy(release_busy),
    .cplh_used(cplh_used),
    .cpld_used(cpld_used),
    .ram_wr_en(ram_wr_en),
    .ram_wr_addr(ram_wr_addr),
    .ram_wr_data(ram_wr_data),
    .wr_job_valid(wr_job_valid),
    .wr_job_ready(wr_job_ready),
    .wr_job_addr(wr_job_addr),
    .wr_job_len(wr_job_len),
    .wr_job_imm_en(wr_job_imm_en),
    .wr_job_imm(wr_job_imm),
    .wr_job_src(wr_job_src),
    .wr_job_attr(wr_job_attr),
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
    .stat_rd_bytes(stat_rd_bytes),
    .stat_mem_wr(stat_mem_wr),
    .stat_wr_bytes(stat_wr_bytes),
    .stat_cpl_tx(stat_cpl_tx),
    .stat_req_rx(stat_req_rx),
    .stat_cpl_rx(stat_cpl_rx),
    .stat_unexp_cpl(stat_unexp_cpl),
    .stat_timeout(stat_timeout),
    .stat_rd_err(stat_rd_err),
    .stat_ur_sent(stat_ur_sent),
    .stat_mmio_dropped(stat_mmio_dropped),
    .stat_credit_stall(stat_credit_stall),
    .stat_tag_stall(stat_tag_stall),
    .stat_quar_release(stat_quar_release)
);

wire unused_ok = &{1'b0, user_lnk_up, cfg_rcb_status[3:1], cfg_function_status[15:3], cfg_function_status[1:0],
                   cfg_interrupt_msix_enable[3:1], cfg_interrupt_msix_mask[3:1]};

endmodule

`resetall
