`resetall
`timescale 1ns / 1ps
`default_nettype none

/* DMA read engine: jobs split into MRd TLPs, many in flight (tag FIFO, completion credits), RC reassembly */
module nic_dma_rd #
(
    // PCIe user interface data width (64, 128, 256)
    parameter DATA_WIDTH = 64,
    // DWORD lanes per beat
    parameter KEEP_WIDTH = DATA_WIDTH/32,
    // RC tuser width (UltraScale+, data width < 512)
    parameter RC_USER_WIDTH = 75,
    // tags in the tag table (8-bit extended tags; only 32 are used while Extended Tag Field Enable is off)
    parameter TAG_MAX = 256,
    // read jobs that may be open at once (each is one client request split into TLPs)
    parameter JOBS = 64,
    // DWORD address width of the destination RAM
    parameter RAM_AW = 15,
    // queue each of the three job ports belongs to (bit p: port p), for quarantine accounting
    parameter [2:0] PORT_QUEUE = 3'b100
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* link parameters and limits */
    input  wire [2:0]                    cfg_max_read_req,
    input  wire                          cfg_rcb_128,
    input  wire                          ext_tag_enable,
    input  wire                          bus_master,
    input  wire [31:0]                   cpl_timeout,
    input  wire [31:0]                   tag_hold,
    input  wire [8:0]                    cplh_limit,
    input  wire [11:0]                   cpld_limit,

    /* read jobs (3 ports): host memory -> destination RAM */
    input  wire [2:0]                    s_job_valid,
    output reg  [2:0]                    s_job_ready,
    input  wire [3*64-1:0]               s_job_addr,
    input  wire [3*16-1:0]               s_job_len,
    input  wire [3*RAM_AW-1:0]           s_job_ram,
    input  wire [3*8-1:0]                s_job_id,
    input  wire [3*3-1:0]                s_job_attr,

    /* job done (one per cycle at most) */
    output reg                           m_done_valid,
    output reg  [1:0]                    m_done_port,
    output reg  [7:0]                    m_done_id,
    output reg  [1:0]                    m_done_status,

    /* a queue reset: free this queue's quarantined tags older than tag_hold (one scan pass) */
    input  wire [1:0]                    quar_release,

    /* read TLP towards the RQ emitter (launched when valid && ready) */
    output wire                          m_tlp_valid,
    input  wire                          m_tlp_ready,
    output wire [63:0]                   m_tlp_addr,
    output wire [10:0]                   m_tlp_dw,
    output wire [3:0]                    m_tlp_first_be,
    output wire [3:0]                    m_tlp_last_be,
    output wire [7:0]                    m_tlp_tag,
    output wire [2:0]                    m_tlp_attr,

    /* requester completion (from the hard IP) */
    input  wire [DATA_WIDTH-1:0]         s_axis_rc_tdata,
    input  wire [KEEP_WIDTH-1:0]         s_axis_rc_tkeep,
    input  wire                          s_axis_rc_tlast,
    input  wire [RC_USER_WIDTH-1:0]      s_axis_rc_tuser,
    input  wire                          s_axis_rc_tvalid,
    output wire                          s_axis_rc_tready,

    /* destination RAM write lanes */
    output reg  [KEEP_WIDTH-1:0]         ram_wr_en,
    output reg  [KEEP_WIDTH*RAM_AW-1:0]  ram_wr_addr,
    output wire [DATA_WIDTH-1:0]         ram_wr_data,

    /* status */
    output reg  [8:0]                    tags_in_flight,
    output reg  [8:0]                    tags_quarantined,
    output wire [8:0]                    tag_limit,
    output wire [1:0]                    quar_full,
    output wire [1:0]                    release_busy,   // a queue's quarantine release pass is running
    output reg  [8:0]                    cplh_used,
    output reg  [11:0]                   cpld_used,

    /* statistics pulses */
    output reg                           stat_mem_rd,
    output reg  [12:0]                   stat_rd_bytes,
    output reg                           stat_cpl_rx,
    output reg                           stat_unexp_cpl,
    output reg                           stat_timeout,
    output reg                           stat_rd_err,
    output reg                           stat_credit_stall,
    output reg                           stat_tag_stall,
    output reg                           stat_quar_release
);

localparam TW = $clog2(TAG_MAX);
localparam JW = $clog2(JOBS);

localparam [1:0] DONE_OK      = 2'd0;
localparam [1:0] DONE_ERR     = 2'd1;
localparam [1:0] DONE_TIMEOUT = 2'd2;
localparam [1:0] DONE_QUAR    = 2'd3;

localparam [2:0] CPL_STATUS_SC = 3'b000;

// RC descriptor: 3 DWORDs before the payload (dword-aligned mode)
localparam [15:0] RC_HDR_DW = 16'd3;
localparam integer KW_INT = KEEP_WIDTH;
localparam [15:0] KW16 = KW_INT[15:0];
// beat in which the last RC descriptor DWORD (the one with the tag) arrives
localparam [8:0] RC_HDR_BEAT = KEEP_WIDTH >= 4 ? 9'd0 : 9'd1;

initial begin
    if (DATA_WIDTH != 64 && DATA_WIDTH != 128 && DATA_WIDTH != 256) begin
        $error("Error: DATA_WIDTH must be 64, 128 or 256 (instance %m)");
        $finish;
    end
    if (KEEP_WIDTH*32 != DATA_WIDTH) begin
        $error("Error: KEEP_WIDTH must be DATA_WIDTH/32 (instance %m)");
        $finish;
    end
    if (TAG_MAX != 256) begin
        $error("Error: TAG_MAX must be 256 (8-bit tags) (instance %m)");
        $finish;
    end
    if ((1 << JW) != JOBS || JOBS < 4) begin
        $error("Error: JOBS must be a power of two >= 4 (instance %m)");
        $finish;
    end
end

/* byte enables for the last 1..4 bytes of a DWORD-aligned transfer */
function [3:0] be_mask;
    input [1:0] len_lsb;
    begin
        case (len_lsb)
            2'd1: be_mask = 4'b0001;
            2'd2: be_mask = 4'b0011;
            2'd3: be_mask = 4'b0111;
            default: be_mask = 4'b1111;
        endcase
    end
endfunction

function [12:0] min3;
    input [15:0] a;
    input [12:0] b;
    input [12:0] c;
    reg [15:0] m;
    begin
        m = a;
        if ({3'd0, b} < m) m = {3'd0, b};
        if ({3'd0, c} < m) m = {3'd0, c};
        min3 = m[12:0];
    end
endfunction

wire [12:0] mrrs_bytes = (cfg_max_read_req > 3'd5) ? 13'd4096 : (13'd128 << cfg_max_read_req);
assign tag_limit = ext_tag_enable ? 9'd256 : 9'd32;

/* free-running cycle counter (completion timeout and quarantine age) */
reg [31:0] now_reg;

/* tag table */
reg              tag_valid   [0:TAG_MAX-1];
reg              tag_quar    [0:TAG_MAX-1];
reg [JW-1:0]     tag_job     [0:TAG_MAX-1];
reg [RAM_AW-1:0] tag_ram     [0:TAG_MAX-1];
reg [12:0]       tag_len     [0:TAG_MAX-1];   // bytes the TLP asked for
reg [31:0]       tag_ts      [0:TAG_MAX-1];   // issue time, then quarantine time
reg [6:0]        tag_cplh    [0:TAG_MAX-1];   // completion credits reserved by the TLP
reg [8:0]        tag_cpld    [0:TAG_MAX-1];
reg              tag_queue   [0:TAG_MAX-1];
`ifdef NIC_FAULT_TAG_LEAK
reg              tag_split   [0:TAG_MAX-1];   // a completion other than the last has arrived
`endif

/* free-tag FIFO */
reg [TW-1:0]     tag_fifo    [0:TAG_MAX-1];
reg [TW:0]       tf_rd_reg, tf_wr_reg;
wire [TW:0]      tf_count = tf_wr_reg - tf_rd_reg;
wire [TW-1:0]    tf_head = tag_fifo[tf_rd_reg[TW-1:0]];
reg              init_busy_reg;
reg [TW:0]       init_cnt_reg;
reg [8:0]        init_limit_reg;              // tags the FIFO was filled with

/* job table */
reg [1:0]        job_port    [0:JOBS-1];
reg [7:0]        job_id      [0:JOBS-1];
reg [8:0]        job_outst   [0:JOBS-1];      // TLPs issued and not answered
reg              job_issuing [0:JOBS-1];      // more TLPs to issue
reg [1:0]        job_status  [0:JOBS-1];
reg [JW-1:0]     job_fifo    [0:JOBS-1];
reg [JW:0]       jf_rd_reg, jf_wr_reg;
wire [JW:0]      jf_count = jf_wr_reg - jf_rd_reg;

/* the job being split into TLPs */
reg              sj_active_reg;
reg [JW-1:0]     sj_slot_reg;
reg [63:0]       sj_addr_reg;
reg [15:0]       sj_rem_reg;
reg [RAM_AW-1:0] sj_ram_reg;
reg [2:0]        sj_attr_reg;
reg              sj_queue_reg;
reg [1:0]        rr_reg;
// a zero-length job (clients do not ask for one) is answered in the first cycle no other job finishes
reg           zdone_reg;
reg [1:0]     zdone_port_reg;
reg [7:0]     zdone_id_reg;
reg [JW-1:0]  zdone_slot_reg;

/* quarantine per queue, release passes */
reg [8:0]        quar_cnt_reg [0:1];
reg [8:0]        rel_left_reg [0:1];           // scan steps left in a release pass (0: none)

/* completion timeout scan */
reg [TW-1:0]     scan_reg;

/* RC receiver */
reg [8:0]        rc_beat_reg;
// a job finished by a completion whose data beats are still arriving: its done waits for the last beat, so the
// client never reads destination RAM the completion has not written yet
reg              rcd_pend_reg;
reg [1:0]        rcd_port_reg;
reg [7:0]        rcd_id_reg;
reg [1:0]        rcd_status_reg;
reg [95:0]       rc_hdr_reg;
reg              rc_ok_reg;
reg [RAM_AW-1:0] rc_dst_reg;

integer i;
initial begin
    now_reg = 32'd0;
    for (i = 0; i < TAG_MAX; i = i + 1) begin
        tag_valid[i] = 1'b0;
        tag_quar[i] = 1'b0;
        tag_job[i] = {JW{1'b0}};
        tag_ram[i] = {RAM_AW{1'b0}};
        tag_len[i] = 13'd0;
        tag_ts[i] = 32'd0;
        tag_cplh[i] = 7'd0;
        tag_cpld[i] = 9'd0;
        tag_queue[i] = 1'b0;
`ifdef NIC_FAULT_TAG_LEAK
        tag_split[i] = 1'b0;
`endif
        tag_fifo[i] = {TW{1'b0}};
    end
    for (i = 0; i < JOBS; i = i + 1) begin
        job_port[i] = 2'd0;
        job_id[i] = 8'd0;
        job_outst[i] = 9'd0;
        job_issuing[i] = 1'b0;
        job_status[i] = DONE_OK;
        job_fifo[i] = {JW{1'b0}};
    end
    tf_rd_reg = {(TW+1){1'b0}};
    tf_wr_reg = {(TW+1){1'b0}};
    init_busy_reg = 1'b1;
    init_cnt_reg = {(TW+1){1'b0}};
    init_limit_reg = 9'd32;
    jf_rd_reg = {(JW+1){1'b0}};
    jf_wr_reg = {(JW+1){1'b0}};
    sj_active_reg = 1'b0;
    sj_slot_reg = {JW{1'b0}};
    sj_addr_reg = 64'd0;
    sj_rem_reg = 16'd0;
    sj_ram_reg = {RAM_AW{1'b0}};
    sj_attr_reg = 3'd0;
    sj_queue_reg = 1'b0;
    rr_reg = 2'd0;
    zdone_reg = 1'b0;
    zdone_port_reg = 2'd0;
    zdone_id_reg = 8'd0;
    zdone_slot_reg = {JW{1'b0}};
    quar_cnt_reg[0] = 9'd0;
    quar_cnt_reg[1] = 9'd0;
    rel_left_reg[0] = 9'd0;
    rel_left_reg[1] = 9'd0;
    scan_reg = {TW{1'b0}};
    rc_beat_reg = 9'd0;
    rcd_pend_reg = 1'b0;
    rcd_port_reg = 2'd0;
    rcd_id_reg = 8'd0;
    rcd_status_reg = DONE_OK;
    rc_hdr_reg = 96'd0;
    rc_ok_reg = 1'b0;
    rc_dst_reg = {RAM_AW{1'b0}};
    s_job_ready = 3'd0;
    m_done_valid = 1'b0;
    m_done_port = 2'd0;
    m_done_id = 8'd0;
    m_done_status = DONE_OK;
    tags_in_flight = 9'd0;
    tags_quarantined = 9'd0;
    cplh_used = 9'd0;
    cpld_used = 12'd0;
    stat_mem_rd = 1'b0;
    stat_rd_bytes = 13'd0;
    stat_cpl_rx = 1'b0;
    stat_unexp_cpl = 1'b0;
    stat_timeout = 1'b0;
    stat_rd_err = 1'b0;
    stat_credit_stall = 1'b0;
    stat_tag_stall = 1'b0;
    stat_quar_release = 1'b0;
end

wire [8:0] quar_limit = {1'b0, tag_limit[8:1]};
assign quar_full[0] = quar_cnt_reg[0] >= quar_limit;
assign quar_full[1] = quar_cnt_reg[1] >= quar_limit;
assign release_busy[0] = rel_left_reg[0] != 9'd0;
assign release_busy[1] = rel_left_reg[1] != 9'd0;

/* ---- next read TLP of the job being split ---- */
// Planted faults for the regression to find (each a `define, all off by default; see docs/benchmarks.md):
// NIC_FAULT_SPLIT_4K reads cross 4 KB boundaries, NIC_FAULT_MRRS_OFF_BY_ONE reads one DWORD past MRRS,
// NIC_FAULT_TAG_LEAK a tag of a read answered in pieces is never freed, NIC_FAULT_BC_REASSEMBLY completions of a
// read larger than 2 KB land one DWORD off, NIC_FAULT_CREDIT_OFF_BY_ONE reserves one CplH credit too few.
`ifdef NIC_FAULT_SPLIT_4K
wire [12:0] rd_len      = min3(sj_rem_reg, mrrs_bytes, 13'h1000);
`elsif NIC_FAULT_MRRS_OFF_BY_ONE
wire [12:0] rd_len      = min3(sj_rem_reg, mrrs_bytes + 13'd4, 13'h1000 - {1'b0, sj_addr_reg[11:0]});
`else
wire [12:0] rd_len      = min3(sj_rem_reg, mrrs_bytes, 13'h1000 - {1'b0, sj_addr_reg[11:0]});
`endif
wire [10:0] rd_dw       = rd_len[12:2] + {10'd0, rd_len[1:0] != 2'd0};
wire [6:0]  rcb_off     = cfg_rcb_128 ? sj_addr_reg[6:0] : {1'b0, sj_addr_reg[5:0]};
// worst case completion count (the completer may split on every RCB) and CplD credits (16 B each, plus one a
// completion: the UltraScale+ buffer holds header and data in one pool)
wire [13:0] rcb_span    = {7'd0, rcb_off} + {1'b0, rd_len} + (cfg_rcb_128 ? 14'd127 : 14'd63);
`ifdef NIC_FAULT_CREDIT_OFF_BY_ONE
wire [6:0]  rd_cplh_ok  = cfg_rcb_128 ? rcb_span[13:7] : rcb_span[12:6];
wire [6:0]  rd_cplh     = rd_cplh_ok > 7'd1 ? rd_cplh_ok - 7'd1 : rd_cplh_ok;
`else
wire [6:0]  rd_cplh     = cfg_rcb_128 ? rcb_span[13:7] : rcb_span[12:6];
`endif
wire [13:0] data_span   = {10'd0, sj_addr_reg[3:0]} + {1'b0, rd_len} + 14'd15;
wire [8:0]  rd_cpld     = data_span[12:4] + {1'b0, rd_cplh, 1'b0};
// a TLP may always go when nothing is outstanding, so a limit below one read's worst case cannot hang the engine
wire        credits_ok  = ({2'd0, cplh_used} + {4'd0, rd_cplh} <= {2'd0, cplh_limit}
                           && {1'b0, cpld_used} + {4'd0, rd_cpld} <= {1'b0, cpld_limit})
                          || (cplh_used == 9'd0 && cpld_used == 12'd0);
wire        tag_ok      = tf_count != {(TW+1){1'b0}} && !init_busy_reg;
wire        sj_abort    = sj_active_reg && quar_full[sj_queue_reg];
wire        rd_last     = sj_rem_reg == {3'd0, rd_len};

assign m_tlp_valid    = sj_active_reg && !sj_abort && tag_ok && credits_ok && bus_master;
assign m_tlp_addr     = sj_addr_reg;
assign m_tlp_dw       = rd_dw;
assign m_tlp_first_be = (rd_dw == 11'd1) ? be_mask(rd_len[1:0]) : 4'b1111;
assign m_tlp_last_be  = (rd_dw == 11'd1) ? 4'b0000 : be_mask(rd_len[1:0]);
assign m_tlp_tag      = tf_head;
assign m_tlp_attr     = sj_attr_reg;
wire   launch         = m_tlp_valid && m_tlp_ready;
wire [TW-1:0] l_tag   = tf_head;

/* ---- RC descriptor ---- */
assign s_axis_rc_tready = 1'b1;
assign ram_wr_data = s_axis_rc_tdata;

reg [95:0] rc_hdr;
reg [15:0] rc_idx;
integer ci1;
always @* begin
    rc_hdr = rc_hdr_reg;
    for (ci1 = 0; ci1 < KEEP_WIDTH; ci1 = ci1 + 1) begin
        rc_idx = {7'd0, rc_beat_reg} * KW16 + ci1[15:0];
        if (rc_idx < RC_HDR_DW) begin
            rc_hdr[rc_idx[1:0]*32 +: 32] = s_axis_rc_tdata[ci1*32 +: 32];
        end
    end
end

wire [3:0]    rc_err_code  = rc_hdr[15:12];
wire [12:0]   rc_byte_cnt  = rc_hdr[28:16];
wire          rc_req_done  = rc_hdr[30];
wire [2:0]    rc_status    = rc_hdr[45:43];
wire          rc_poisoned  = rc_hdr[46];
wire [TW-1:0] rc_tag       = rc_hdr[64 +: TW];
wire          rc_hdr_beat  = s_axis_rc_tvalid && rc_beat_reg == RC_HDR_BEAT;
wire          rc_live      = tag_valid[rc_tag];
wire          rc_good      = rc_live && rc_err_code == 4'd0 && rc_status == CPL_STATUS_SC && !rc_poisoned;
`ifdef NIC_FAULT_BC_REASSEMBLY
wire [12:0]   rc_offset    = tag_len[rc_tag] - rc_byte_cnt - (rc_byte_cnt > 13'd2048 ? 13'd4 : 13'd0);
`else
wire [12:0]   rc_offset    = tag_len[rc_tag] - rc_byte_cnt;   // bytes of the TLP already delivered
`endif
wire [RAM_AW-1:0] rc_dst_comb = tag_ram[rc_tag] + {{(RAM_AW-11){1'b0}}, rc_offset[12:2]};
wire          rc_ok_cur    = rc_hdr_beat ? rc_good : rc_ok_reg;
wire [RAM_AW-1:0] rc_dst_cur = rc_hdr_beat ? rc_dst_comb : rc_dst_reg;

reg [15:0] rc_widx;
reg [RAM_AW-1:0] rc_p;
integer ci2;
always @* begin
    ram_wr_en = {KEEP_WIDTH{1'b0}};
    ram_wr_addr = {KEEP_WIDTH*RAM_AW{1'b0}};
    for (ci2 = 0; ci2 < KEEP_WIDTH; ci2 = ci2 + 1) begin
        rc_widx = {7'd0, rc_beat_reg} * KW16 + ci2[15:0];
        rc_p = rc_widx[RAM_AW-1:0] - RC_HDR_DW[RAM_AW-1:0];
        ram_wr_addr[ci2*RAM_AW +: RAM_AW] = rc_dst_cur + rc_p;
        if (s_axis_rc_tvalid && s_axis_rc_tkeep[ci2] && rc_widx >= RC_HDR_DW && rc_ok_cur) begin
            ram_wr_en[ci2] = 1'b1;
        end
    end
end

/* ---- completion timeout / quarantine release scan: one tag per cycle, paused while a completion is taken ---- */
wire        scan_q       = tag_queue[scan_reg];
wire [31:0] scan_age     = now_reg - tag_ts[scan_reg];
wire        rc_last_beat = s_axis_rc_tvalid && s_axis_rc_tlast;
wire        scan_run     = !rc_hdr_beat && !init_busy_reg && !sj_abort && !rcd_pend_reg;
wire        scan_timeout = scan_run && tag_valid[scan_reg] && scan_age >= cpl_timeout;
wire        scan_release = scan_run && !scan_timeout && tag_quar[scan_reg] && rel_left_reg[scan_q] != 9'd0
                           && scan_age >= tag_hold;

/* ---- per-cycle decisions ---- */
// a tag leaves the table (answered in full, or freed from quarantine): back to the FIFO, credits returned
reg           free_en;
reg [TW-1:0]  free_tag;
// a job loses an outstanding TLP (answered or timed out)
reg           dec_en;
reg [JW-1:0]  dec_job;
reg [1:0]     dec_status;
reg           quar_set, quar_clr;
reg           quar_clr_q;
always @* begin
    free_en = 1'b0;
    free_tag = rc_tag;
    dec_en = 1'b0;
    dec_job = tag_job[rc_tag];
    dec_status = DONE_OK;
    quar_set = 1'b0;
    quar_clr = 1'b0;
    quar_clr_q = tag_queue[rc_tag];
    if (rc_hdr_beat) begin
        if (rc_live) begin
            if (!rc_good) dec_status = DONE_ERR;
            if (rc_req_done) begin
`ifdef NIC_FAULT_TAG_LEAK
                free_en = !tag_split[rc_tag];   // fault: the tag of a read answered in pieces is lost
`else
                free_en = 1'b1;
`endif
                dec_en = 1'b1;
            end
        end else if (tag_quar[rc_tag] && rc_req_done) begin
            // the late completion of a timed-out read: the tag is safe to reuse now
            free_en = 1'b1;
            quar_clr = 1'b1;
        end
    end else if (scan_timeout) begin
        dec_en = 1'b1;
        dec_job = tag_job[scan_reg];
        dec_status = DONE_TIMEOUT;
        quar_set = 1'b1;
    end else if (scan_release) begin
        free_en = 1'b1;
        free_tag = scan_reg;
        quar_clr = 1'b1;
        quar_clr_q = scan_q;
    end
end

// a job whose queue hit the quarantine limit stops issuing; taken in a cycle without a completion beat (the
// scan pauses meanwhile), so it never finishes a job in the same cycle as a completion or a timeout
wire          sj_abort_now = sj_abort && !rc_hdr_beat && !rcd_pend_reg;

wire          cred_rel = (dec_en && rc_hdr_beat) || quar_set;
wire [TW-1:0] cred_tag = quar_set ? scan_reg : rc_tag;

// job table updates: the job being split (s) and the job losing a TLP (d) may be the same
wire [JW-1:0] s_job = sj_slot_reg;
wire          same_job = dec_en && dec_job == s_job && sj_active_reg;
wire [8:0]    d_outst = job_outst[dec_job] - 9'd1 + ((same_job && launch) ? 9'd1 : 9'd0);
wire          d_issuing = same_job ? !(launch && rd_last) : job_issuing[dec_job];
wire [1:0]    d_status = (dec_status > job_status[dec_job]) ? dec_status : job_status[dec_job];
wire          d_finish = dec_en && d_outst == 9'd0 && !d_issuing;
wire          a_finish = sj_abort_now && job_outst[s_job] == 9'd0;
wire          z_finish = zdone_reg && !d_finish && !a_finish && !rcd_pend_reg;

// accept a new job (round robin over the three ports)
reg [1:0] pick;
reg       pick_ok;
reg [2:0] rk;
integer ci3;
always @* begin
    pick = 2'd0;
    pick_ok = 1'b0;
    for (ci3 = 3; ci3 >= 1; ci3 = ci3 - 1) begin
        rk = ({1'b0, rr_reg} + ci3[2:0]) % 3'd3;
        if (s_job_valid[rk[1:0]]) begin
            pick = rk[1:0];
            pick_ok = 1'b1;
        end
    end
    if (sj_active_reg || init_busy_reg || zdone_reg || jf_count == {(JW+1){1'b0}}) pick_ok = 1'b0;
    s_job_ready = 3'd0;
    if (pick_ok) s_job_ready[pick] = 1'b1;
end
wire [JW-1:0] a_slot = job_fifo[jf_rd_reg[JW-1:0]];
wire [15:0]   pick_len = s_job_len[pick*16 +: 16];

// the FIFO may be refilled for a new tag limit only when no tag is in use
wire reinit = !init_busy_reg && tag_limit != init_limit_reg && tags_in_flight == 9'd0
              && tags_quarantined == 9'd0 && !sj_active_reg && !pick_ok;

integer q;
always @(posedge clk) begin
    now_reg <= now_reg + 32'd1;
    m_done_valid <= 1'b0;
    stat_mem_rd <= 1'b0;
    stat_rd_bytes <= 13'd0;
    stat_cpl_rx <= 1'b0;
    stat_unexp_cpl <= 1'b0;
    stat_timeout <= 1'b0;
    stat_rd_err <= 1'b0;
    stat_credit_stall <= sj_active_reg && !sj_abort && tag_ok && !credits_ok;
    stat_tag_stall <= sj_active_reg && !sj_abort && !tag_ok;
    stat_quar_release <= 1'b0;

    /* tag FIFO fill after reset or a tag-limit change */
    if (init_busy_reg) begin
        tag_fifo[init_cnt_reg[TW-1:0]] <= init_cnt_reg[TW-1:0];
        init_cnt_reg <= init_cnt_reg + 1'b1;
        if (init_cnt_reg + 1'b1 == {1'b0, init_limit_reg[TW:0]}) begin
            init_busy_reg <= 1'b0;
            tf_rd_reg <= {(TW+1){1'b0}};
            tf_wr_reg <= init_limit_reg[TW:0];
        end
    end else if (reinit) begin
        init_busy_reg <= 1'b1;
        init_cnt_reg <= {(TW+1){1'b0}};
        init_limit_reg <= tag_limit;
    end

    /* accept a job */
    if (pick_ok) begin
        sj_active_reg <= pick_len != 16'd0;
        sj_slot_reg <= a_slot;
        sj_addr_reg <= s_job_addr[pick*64 +: 64];
        sj_rem_reg <= pick_len;
        sj_ram_reg <= s_job_ram[pick*RAM_AW +: RAM_AW];
        sj_attr_reg <= s_job_attr[pick*3 +: 3];
        sj_queue_reg <= PORT_QUEUE[pick];
        rr_reg <= pick;
        jf_rd_reg <= jf_rd_reg + 1'b1;
        job_port[a_slot] <= pick;
        job_id[a_slot] <= s_job_id[pick*8 +: 8];
        job_outst[a_slot] <= 9'd0;
        job_issuing[a_slot] <= pick_len != 16'd0;
        job_status[a_slot] <= DONE_OK;
        if (pick_len == 16'd0) begin
            zdone_reg <= 1'b1;
            zdone_port_reg <= pick;
            zdone_id_reg <= s_job_id[pick*8 +: 8];
            zdone_slot_reg <= a_slot;
        end
    end
    if (z_finish) begin
        zdone_reg <= 1'b0;
        m_done_valid <= 1'b1;
        m_done_port <= zdone_port_reg;
        m_done_id <= zdone_id_reg;
        m_done_status <= DONE_OK;
        job_fifo[jf_wr_reg[JW-1:0]] <= zdone_slot_reg;
        jf_wr_reg <= jf_wr_reg + 1'b1;
    end

    /* launch a read TLP */
    if (launch) begin
        tf_rd_reg <= tf_rd_reg + 1'b1;
        tag_valid[l_tag] <= 1'b1;
        tag_job[l_tag] <= s_job;
        tag_ram[l_tag] <= sj_ram_reg;
        tag_len[l_tag] <= rd_len;
        tag_ts[l_tag] <= now_reg;
        tag_cplh[l_tag] <= rd_cplh;
        tag_cpld[l_tag] <= rd_cpld;
        tag_queue[l_tag] <= sj_queue_reg;
`ifdef NIC_FAULT_TAG_LEAK
        tag_split[l_tag] <= 1'b0;
`endif
        sj_addr_reg <= sj_addr_reg + {51'd0, rd_len};
        sj_rem_reg <= sj_rem_reg - {3'd0, rd_len};
        sj_ram_reg <= sj_ram_reg + {{(RAM_AW-11){1'b0}}, rd_dw};
        if (rd_last) sj_active_reg <= 1'b0;
        if (!same_job) begin
            job_outst[s_job] <= job_outst[s_job] + 9'd1;
            if (rd_last) job_issuing[s_job] <= 1'b0;
        end
        stat_mem_rd <= 1'b1;
        stat_rd_bytes <= rd_len;
    end

    if (sj_abort_now) begin
        sj_active_reg <= 1'b0;
        job_issuing[s_job] <= 1'b0;
        job_status[s_job] <= DONE_QUAR;
        if (a_finish) begin
            m_done_valid <= 1'b1;
            m_done_port <= job_port[s_job];
            m_done_id <= job_id[s_job];
            m_done_status <= DONE_QUAR;
            job_fifo[jf_wr_reg[JW-1:0]] <= s_job;
            jf_wr_reg <= jf_wr_reg + 1'b1;
        end
    end

    /* a job loses an outstanding TLP */
    if (dec_en) begin
        job_outst[dec_job] <= d_outst;
        job_issuing[dec_job] <= d_issuing;
        job_status[dec_job] <= d_status;
        if (d_finish) begin
            if (rc_hdr_beat && !rc_last_beat) begin
                rcd_pend_reg <= 1'b1;        // announced at the completion's last beat
                rcd_port_reg <= job_port[dec_job];
                rcd_id_reg <= job_id[dec_job];
                rcd_status_reg <= d_status;
            end else begin
                m_done_valid <= 1'b1;
                m_done_port <= job_port[dec_job];
                m_done_id <= job_id[dec_job];
                m_done_status <= d_status;
            end
            job_fifo[jf_wr_reg[JW-1:0]] <= dec_job;
            jf_wr_reg <= jf_wr_reg + 1'b1;
        end
    end
    if (rcd_pend_reg && rc_last_beat) begin
        rcd_pend_reg <= 1'b0;
        m_done_valid <= 1'b1;
        m_done_port <= rcd_port_reg;
        m_done_id <= rcd_id_reg;
        m_done_status <= rcd_status_reg;
    end

    /* tags leave the table */
    if (free_en) begin
        tag_fifo[tf_wr_reg[TW-1:0]] <= free_tag;
        tf_wr_reg <= tf_wr_reg + 1'b1;
        if (!quar_clr) tag_valid[free_tag] <= 1'b0;
    end
    if (dec_en && rc_hdr_beat) tag_valid[rc_tag] <= 1'b0;  // answered in full (freed above, or leaked)
    if (quar_set) begin
        tag_valid[scan_reg] <= 1'b0;
        tag_quar[scan_reg] <= 1'b1;
        tag_ts[scan_reg] <= now_reg;
        stat_timeout <= 1'b1;
    end
    if (quar_clr) begin
        tag_quar[free_tag] <= 1'b0;
        stat_quar_release <= 1'b1;
    end

    /* counters */
    tags_in_flight <= tags_in_flight + {8'd0, launch} - {8'd0, dec_en};
    tags_quarantined <= tags_quarantined + {8'd0, quar_set} - {8'd0, quar_clr};
    for (q = 0; q < 2; q = q + 1) begin
        quar_cnt_reg[q] <= quar_cnt_reg[q] + {8'd0, quar_set && tag_queue[scan_reg] == q[0]}
                           - {8'd0, quar_clr && quar_clr_q == q[0]};
        if (quar_release[q]) begin
            rel_left_reg[q] <= tag_limit;
        end else if (rel_left_reg[q] != 9'd0 && scan_run) begin
            rel_left_reg[q] <= rel_left_reg[q] - 9'd1;
        end
    end
    // a read returns its completion-buffer reservation when it is answered in full or times out (a quarantined
    // tag holding its reservation would starve the buffer; its late completion, if any, is unexpected anyway)
    cplh_used <= cplh_used + (launch ? {2'd0, rd_cplh} : 9'd0) - (cred_rel ? {2'd0, tag_cplh[cred_tag]} : 9'd0);
    cpld_used <= cpld_used + (launch ? {3'd0, rd_cpld} : 12'd0) - (cred_rel ? {3'd0, tag_cpld[cred_tag]} : 12'd0);

    /* timeout scan */
    if (scan_run) begin
        scan_reg <= ({1'b0, scan_reg} + 9'd1 >= tag_limit) ? {TW{1'b0}} : scan_reg + 1'b1;
    end

    /* RC beats */
    if (s_axis_rc_tvalid) begin
        rc_hdr_reg <= rc_hdr;
        rc_beat_reg <= s_axis_rc_tlast ? 9'd0 : rc_beat_reg + 9'd1;
    end
    if (rc_hdr_beat) begin
`ifdef NIC_FAULT_TAG_LEAK
        if (rc_live && !rc_req_done) tag_split[rc_tag] <= 1'b1;
`endif
        rc_ok_reg <= rc_good;
        rc_dst_reg <= rc_dst_comb;
        stat_cpl_rx <= 1'b1;
        stat_unexp_cpl <= !rc_live;
        stat_rd_err <= rc_live && !rc_good;
    end

    if (rst) begin
        init_busy_reg <= 1'b1;
        init_cnt_reg <= {(TW+1){1'b0}};
        init_limit_reg <= tag_limit;
        tf_rd_reg <= {(TW+1){1'b0}};
        tf_wr_reg <= {(TW+1){1'b0}};
        jf_rd_reg <= {(JW+1){1'b0}};
        jf_wr_reg <= JOBS[JW:0];
        sj_active_reg <= 1'b0;
        zdone_reg <= 1'b0;
        rr_reg <= 2'd0;
        scan_reg <= {TW{1'b0}};
        rc_beat_reg <= 9'd0;
        rcd_pend_reg <= 1'b0;
        m_done_valid <= 1'b0;
        tags_in_flight <= 9'd0;
        tags_quarantined <= 9'd0;
        cplh_used <= 9'd0;
        cpld_used <= 12'd0;
        for (q = 0; q < 2; q = q + 1) begin
            quar_cnt_reg[q] <= 9'd0;
            rel_left_reg[q] <= 9'd0;
        end
        for (i = 0; i < TAG_MAX; i = i + 1) begin
            tag_valid[i] <= 1'b0;
            tag_quar[i] <= 1'b0;
        end
        for (i = 0; i < JOBS; i = i + 1) begin
            job_fifo[i] <= i[JW-1:0];
        end
    end
end

// rc_offset is a byte offset within a DWORD-aligned request (low bits 0); RC tuser carries byte enables and
// parity that DWORD-aligned completions do not need
wire unused_ok = &{1'b0, rc_offset[1:0], s_axis_rc_tuser, data_span[13], data_span[3:0], rcb_span[13], rcb_span[5:0], rk[2]};

endmodule

`resetall
