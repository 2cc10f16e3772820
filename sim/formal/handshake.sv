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
  input wire o_ready                 // free: any back-pressure
);
  reg init = 1'b1;                   // high in the first cycle only
  always @(posedge clk) init <= 1'b0;
  wire rst = init | rst_in;          // reset in the first cycle, free later

  wire i_ready, o_valid;
  wire [BUS-1:0] o_payload;
  ssvq_accel dut (.clk(clk), .rst(rst),
    .i_stream__payload(i_payload), .i_stream__valid(i_valid), .i_stream__ready(i_ready),
    .o_stream__payload(o_payload), .o_stream__valid(o_valid), .o_stream__ready(o_ready));

  // what the previous cycle was ("waiting" = valid and not ready, no reset)
  reg i_wait = 1'b0, o_wait = 1'b0, was_rst = 1'b1;
  reg [BUS-1:0] i_held = 0, o_held = 0;
  always @(posedge clk) begin
    i_wait <= i_valid & ~i_ready & ~rst;
    o_wait <= o_valid & ~o_ready & ~rst;
    i_held <= i_payload;
    o_held <= o_payload;
    was_rst <= rst;
  end

  always @* begin
    // environment (input port): a waiting beat stays valid and unchanged
    if (i_wait) assume (i_valid && i_payload == i_held);
    // DUT (output port): the same rules; no output beat the cycle after a reset
    if (o_wait) o_valid_held: assert (o_valid);
    if (o_wait) o_payload_stable: assert (o_payload == o_held);
    if (was_rst) o_idle_after_reset: assert (!o_valid);
    // non-vacuity: an output beat is accepted; a back-pressured beat is still offered
    c_o_accepted: cover (o_valid && o_ready);
    c_o_held: cover (o_wait && o_valid);
  end
endmodule
