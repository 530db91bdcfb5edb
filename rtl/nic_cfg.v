`resetall
`timescale 1ns / 1ps
`default_nettype none

/* Configuration shim: reads the function's Device Control register through the hard IP's cfg_mgmt port */
module nic_cfg #
(
    // DWORD index of the PCI Express capability in configuration space (UltraScale+: 0x1C, byte 0x70)
    parameter PCIE_CAP_DW = 10'h01C,
    // cycles between two reads of Device Control (the host changes it rarely: during enumeration)
    parameter POLL_CYCLES = 256
)
(
    input  wire         clk,
    input  wire         rst,

    /* configuration management interface of the hard IP */
    output wire [9:0]   cfg_mgmt_addr,
    output wire [7:0]   cfg_mgmt_function_number,
    output wire         cfg_mgmt_write,
    output wire [31:0]  cfg_mgmt_write_data,
    output wire [3:0]   cfg_mgmt_byte_enable,
    output wire         cfg_mgmt_read,
    input  wire [31:0]  cfg_mgmt_read_data,
    input  wire         cfg_mgmt_read_write_done,

    /* Device Control bits (PCIe 7.5.3.4) */
    output wire         ext_tag_enable,
    output wire         relaxed_ordering_enable,
    output wire         no_snoop_enable
);

// Device Control is the low half of the DWORD at capability + 8 bytes
localparam [9:0] DEVCTL_DW = PCIE_CAP_DW + 10'd2;
localparam DEVCTL_RO_BIT = 4;
localparam DEVCTL_EXT_TAG_BIT = 8;
localparam DEVCTL_NS_BIT = 11;
localparam CW = $clog2(POLL_CYCLES);

localparam [0:0] STATE_WAIT = 1'b0, STATE_READ = 1'b1;

initial begin
    if (POLL_CYCLES < 2 || (1 << CW) != POLL_CYCLES) begin
        $error("Error: POLL_CYCLES must be a power of two >= 2 (instance %m)");
        $finish;
    end
end

reg [0:0]    state_reg, state_next;
reg [CW-1:0] count_reg, count_next;
reg [15:0]   devctl_reg, devctl_next;

initial begin
    state_reg = STATE_WAIT;
    count_reg = {CW{1'b0}};
    devctl_reg = 16'd0;
end

assign cfg_mgmt_addr = DEVCTL_DW;
assign cfg_mgmt_function_number = 8'd0;
assign cfg_mgmt_write = 1'b0;
assign cfg_mgmt_write_data = 32'd0;
assign cfg_mgmt_byte_enable = 4'b0011;
assign cfg_mgmt_read = state_reg == STATE_READ;

assign ext_tag_enable = devctl_reg[DEVCTL_EXT_TAG_BIT];
assign relaxed_ordering_enable = devctl_reg[DEVCTL_RO_BIT];
assign no_snoop_enable = devctl_reg[DEVCTL_NS_BIT];

always @* begin
    state_next = state_reg;
    count_next = count_reg;
    devctl_next = devctl_reg;
    case (state_reg)
        STATE_WAIT: begin
            count_next = count_reg + 1'b1;
            if (&count_reg) begin
                state_next = STATE_READ;
            end
        end
        STATE_READ: begin
            if (cfg_mgmt_read_write_done) begin
                devctl_next = cfg_mgmt_read_data[15:0];
                state_next = STATE_WAIT;
            end
        end
        default: state_next = STATE_WAIT;
    endcase
end

always @(posedge clk) begin
    state_reg <= state_next;
    count_reg <= count_next;
    devctl_reg <= devctl_next;
    if (rst) begin
        state_reg <= STATE_WAIT;
        count_reg <= {CW{1'b0}};
        devctl_reg <= 16'd0;
    end
end

wire unused_ok = &{1'b0, cfg_mgmt_read_data[31:16]};

endmodule

`resetall
