// Stream-handshake properties of ssvq_accel, for yosys' SMT flow (read_verilog -formal).
// One DUT, every top-level input free each cycle (yosys' rule for undriven top inputs)
// except as assumed below. sim/formal/__init__.py builds and runs it; docs/ARCH.md
// "Formal checks" says what it proves.
`default_nettype none
module ssvq_formal_handshake #(parameter BUS = 64) (
  input wire clk,
  input wire rst_in,                 // free: a reset may come in any cycle
  input wire [BUS-1:0] i_payload,    // free, except while a beat waits (assumed)
  input wire i_valid,
  input wire i_last,                 // free: framing errors included (they stop the input)
  input wire o_ready                 // free: any back-pressure
);
  reg init = 1'b1;                   // high in the first cycle only
  always @(posedge clk) init <= 1'b0;
  wire rst = init | rst_in;          // reset in the first cycle, free later

  wire i_ready, o_valid, o_last;
  wire [BUS-1:0] o_payload;
  ssvq_accel dut (.clk(clk), .rst(rst),
    .s_axis_tdata(i_payload), .s_axis_tvalid(i_valid), .s_axis_tready(i_ready),
    .s_axis_tlast(i_last),
    .m_axis_tdata(o_payload), .m_axis_tvalid(o_valid), .m_axis_tready(o_ready),
    .m_axis_tlast(o_last),
    // AXI4-Lite idle: no register access, so no soft reset
    .s_axil_awaddr(8'd0), .s_axil_awvalid(1'b0), .s_axil_wdata(32'd0), .s_axil_wstrb(4'd0),
    .s_axil_wvalid(1'b0), .s_axil_bready(1'b1), .s_axil_araddr(8'd0), .s_axil_arvalid(1'b0),
    .s_axil_rready(1'b1),
    .s_axil_awready(), .s_axil_wready(), .s_axil_bresp(), .s_axil_bvalid(),
    .s_axil_arready(), .s_axil_rdata(), .s_axil_rresp(), .s_axil_rvalid(),
    .irq(), .busy());

  // what the previous cycle was ("waiting" = valid and not ready, no reset)
  reg i_wait = 1'b0, o_wait = 1'b0, was_rst = 1'b1;
  reg [BUS-1:0] i_held = 0, o_held = 0;
  reg i_last_held = 1'b0, o_last_held = 1'b0;
  always @(posedge clk) begin
    i_wait <= i_valid & ~i_ready & ~rst;
    o_wait <= o_valid & ~o_ready & ~rst;
    i_held <= i_payload;
    o_held <= o_payload;
    i_last_held <= i_last;
    o_last_held <= o_last;
    was_rst <= rst;
  end

  always @* begin
    // environment (input port): a waiting beat stays valid and unchanged
    if (i_wait) assume (i_valid && i_payload == i_held && i_last == i_last_held);
    // DUT (output port): the same rules; no output beat the cycle after a reset
    if (o_wait) o_valid_held: assert (o_valid);
    if (o_wait) o_payload_stable: assert (o_payload == o_held && o_last == o_last_held);
    if (was_rst) o_idle_after_reset: assert (!o_valid);
    // non-vacuity: an output beat is accepted; a back-pressured beat is still offered
    c_o_accepted: cover (o_valid && o_ready);
    c_o_held: cover (o_wait && o_valid);
  end
endmodule
