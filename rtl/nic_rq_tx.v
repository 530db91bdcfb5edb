`resetall
`timescale 1ns / 1ps
`default_nettype none

/* RQ emitter: serialises read and write TLPs (UltraScale+ requester request descriptor + payload) */
module nic_rq_tx #
(
    // PCIe user interface data width (64, 128, 256)
    parameter DATA_WIDTH = 64,
    // DWORD lanes per beat
    parameter KEEP_WIDTH = DATA_WIDTH/32,
    // RQ tuser width (UltraScale+, data width < 512)
    parameter RQ_USER_WIDTH = 62,
    // DWORD address width of the write source RAM
    parameter SRC_AW = 13
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* read TLPs */
    input  wire                          s_rd_valid,
    output wire                          s_rd_ready,
    input  wire [63:0]                   s_rd_addr,
    input  wire [10:0]                   s_rd_dw,
    input  wire [3:0]                    s_rd_first_be,
    input  wire [3:0]                    s_rd_last_be,
    input  wire [7:0]                    s_rd_tag,
    input  wire [2:0]                    s_rd_attr,

    /* write TLPs */
    input  wire                          s_wr_valid,
    output wire                          s_wr_ready,
    input  wire [63:0]                   s_wr_addr,
    input  wire [10:0]                   s_wr_dw,
    input  wire [3:0]                    s_wr_first_be,
    input  wire [3:0]                    s_wr_last_be,
    input  wire [2:0]                    s_wr_attr,
    input  wire                          s_wr_imm_en,
    input  wire [127:0]                  s_wr_imm,
    input  wire [SRC_AW-1:0]             s_wr_src,
    input  wire                          s_wr_last,
    input  wire [1:0]                    s_wr_port,
    output reg                           m_wr_sent_valid,
    output reg                           m_wr_sent_last,
    output reg  [1:0]                    m_wr_sent_port,

    /* write source RAM read lanes (combinational) */
    output reg  [KEEP_WIDTH*SRC_AW-1:0]  src_rd_addr,
    input  wire [DATA_WIDTH-1:0]         src_rd_data,

    /* requester request (to the hard IP) */
    output reg  [DATA_WIDTH-1:0]         m_axis_rq_tdata,
    output reg  [KEEP_WIDTH-1:0]         m_axis_rq_tkeep,
    output reg                           m_axis_rq_tlast,
    output wire [RQ_USER_WIDTH-1:0]      m_axis_rq_tuser,
    output wire                          m_axis_rq_tvalid,
    input  wire                          m_axis_rq_tready
);

localparam [3:0] REQ_TYPE_MEM_RD = 4'b0000;
localparam [3:0] REQ_TYPE_MEM_WR = 4'b0001;
localparam [15:0] RQ_HDR_DW = 16'd4;
localparam integer KW_INT = KEEP_WIDTH;
localparam [15:0] KW16 = KW_INT[15:0];

/* the UltraScale+ requester request descriptor (PG213, "Requester Request Descriptor Format"), by field */
function [127:0] rq_desc;
    input [63:0] addr;       // DW0-1: address [63:2], address type [1:0] = 00 (untranslated)
    input [10:0] dword_count;
    input [3:0]  req_type;
    input [7:0]  tag;
    input [2:0]  attr;       // bit 0 no snoop, bit 1 relaxed ordering, bit 2 ID-based ordering
    begin
        rq_desc = 128'd0;
        rq_desc[63:0]    = addr & ~64'd3;
        rq_desc[74:64]   = dword_count;
        rq_desc[78:75]   = req_type;
        rq_desc[79]      = 1'b0;   // poisoned request
        rq_desc[95:80]   = 16'd0;  // requester ID (the hard IP fills in the function's ID)
        rq_desc[103:96]  = tag;
        rq_desc[119:104] = 16'd0;  // completer ID (not used for memory requests)
        rq_desc[120]     = 1'b0;   // requester ID enable
        rq_desc[123:121] = 3'd0;   // traffic class
        rq_desc[126:124] = attr;
        rq_desc[127]     = 1'b0;   // force ECRC
    end
endfunction

reg              busy_reg;
reg [8:0]        beat_reg;
reg [127:0]      hdr_reg;
reg [10:0]       ndw_reg;          // payload DWORDs (0 for reads)
reg              imm_en_reg;
reg [127:0]      imm_reg;
reg [SRC_AW-1:0] src_reg;
reg [3:0]        first_be_reg;
reg [3:0]        last_be_reg;
reg              is_wr_reg;
reg              wr_last_reg;
reg [1:0]        wr_port_reg;
reg              prio_wr_reg;      // alternate read and write TLPs

initial begin
    busy_reg = 1'b0;
    beat_reg = 9'd0;
    hdr_reg = 128'd0;
    ndw_reg = 11'd0;
    imm_en_reg = 1'b0;
    imm_reg = 128'd0;
    src_reg = {SRC_AW{1'b0}};
    first_be_reg = 4'd0;
    last_be_reg = 4'd0;
    is_wr_reg = 1'b0;
    wr_last_reg = 1'b0;
    wr_port_reg = 2'd0;
    prio_wr_reg = 1'b0;
    m_wr_sent_valid = 1'b0;
    m_wr_sent_last = 1'b0;
    m_wr_sent_port = 2'd0;
end

assign s_rd_ready = !busy_reg && s_rd_valid && (!s_wr_valid || !prio_wr_reg);
assign s_wr_ready = !busy_reg && s_wr_valid && !s_rd_ready;
assign m_axis_rq_tvalid = busy_reg;
assign m_axis_rq_tuser = {{(RQ_USER_WIDTH-8){1'b0}}, last_be_reg, first_be_reg};

// lane k of beat b carries TLP DWORD b*KEEP_WIDTH+k: the descriptor first, then the payload
/* verilator lint_off UNUSEDSIGNAL */
reg [15:0] sa_idx;  // lane DWORD index; only the RAM-address bits are used
/* verilator lint_on UNUSEDSIGNAL */
reg [SRC_AW-1:0] sa_p;
integer ca;
always @* begin
    src_rd_addr = {KEEP_WIDTH*SRC_AW{1'b0}};
    for (ca = 0; ca < KEEP_WIDTH; ca = ca + 1) begin
        sa_idx = {7'd0, beat_reg} * KW16 + ca[15:0];
        sa_p = sa_idx[SRC_AW-1:0] - RQ_HDR_DW[SRC_AW-1:0];
        src_rd_addr[ca*SRC_AW +: SRC_AW] = src_reg + sa_p;
    end
end

reg [31:0] rq_dw;
reg [15:0] rq_idx;
reg [1:0]  rq_p;
integer cb;
always @* begin
    m_axis_rq_tdata = {DATA_WIDTH{1'b0}};
    m_axis_rq_tkeep = {KEEP_WIDTH{1'b0}};
    for (cb = 0; cb < KEEP_WIDTH; cb = cb + 1) begin
        rq_idx = {7'd0, beat_reg} * KW16 + cb[15:0];
        rq_p = rq_idx[1:0] - RQ_HDR_DW[1:0];
        if (rq_idx < RQ_HDR_DW) begin
            rq_dw = hdr_reg[rq_idx[1:0]*32 +: 32];
        end else if (imm_en_reg) begin
            rq_dw = imm_reg[rq_p*32 +: 32];
        end else begin
            rq_dw = src_rd_data[cb*32 +: 32];
        end
        if (rq_idx < RQ_HDR_DW + {5'd0, ndw_reg}) begin
            m_axis_rq_tdata[cb*32 +: 32] = rq_dw;
            m_axis_rq_tkeep[cb] = 1'b1;
        end
    end
    m_axis_rq_tlast = ({7'd0, beat_reg} + 16'd1) * KW16 >= RQ_HDR_DW + {5'd0, ndw_reg};
end

always @(posedge clk) begin
    m_wr_sent_valid <= 1'b0;
    if (s_rd_ready) begin
        busy_reg <= 1'b1;
        beat_reg <= 9'd0;
        hdr_reg <= rq_desc(s_rd_addr, s_rd_dw, REQ_TYPE_MEM_RD, s_rd_tag, s_rd_attr);
        ndw_reg <= 11'd0;
        imm_en_reg <= 1'b0;
        first_be_reg <= s_rd_first_be;
        last_be_reg <= s_rd_last_be;
        is_wr_reg <= 1'b0;
        prio_wr_reg <= 1'b1;
    end else if (s_wr_ready) begin
        busy_reg <= 1'b1;
        beat_reg <= 9'd0;
        hdr_reg <= rq_desc(s_wr_addr, s_wr_dw, REQ_TYPE_MEM_WR, 8'd0, s_wr_attr);
        ndw_reg <= s_wr_dw;
        imm_en_reg <= s_wr_imm_en;
        imm_reg <= s_wr_imm;
        src_reg <= s_wr_src;
        first_be_reg <= s_wr_first_be;
        last_be_reg <= s_wr_last_be;
        is_wr_reg <= 1'b1;
        wr_last_reg <= s_wr_last;
        wr_port_reg <= s_wr_port;
        prio_wr_reg <= 1'b0;
    end
    if (busy_reg && m_axis_rq_tready) begin
        beat_reg <= beat_reg + 9'd1;
        if (m_axis_rq_tlast) begin
            busy_reg <= 1'b0;
            if (is_wr_reg) begin
                m_wr_sent_valid <= 1'b1;
                m_wr_sent_last <= wr_last_reg;
                m_wr_sent_port <= wr_port_reg;
            end
        end
    end
    if (rst) begin
        busy_reg <= 1'b0;
        beat_reg <= 9'd0;
        prio_wr_reg <= 1'b0;
        m_wr_sent_valid <= 1'b0;
    end
end

endmodule

`resetall
