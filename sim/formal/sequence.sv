// "No output beat lost or duplicated under any back-pressure", for yosys' SMT flow.
// Two copies of ssvq_accel read the same layer stream, a free constant chosen by the
// solver within the legal-layer bits (FIXED_MASK / FIXED_VAL: header, reserved and
// padding bits); each copy takes it beat by beat at its own pace (its own free input
// valid, the stream rules assumed). Copy B's output is always ready, copy A's is under
// free back-pressure. Asserted: the k-th output beat A hands over equals the k-th of B,
// neither hands over more than the layer's OUT_BEATS, and a copy whose input is all
// taken and whose output has been ready for QUIET cycles has handed over all of them.
// sim/formal/__init__.py sets the parameters; docs/ARCH.md "Formal checks" explains.
`default_nettype none
module ssvq_formal_side #(
  parameter BUS = 64, parameter NB = 13, parameter OUT_BEATS = 2, parameter QUIET = 24
) (
  input wire clk,
  input wire rst,
  input wire [NB*BUS-1:0] stream,
  input wire i_valid_free,
  input wire o_ready,
  output reg [7:0] n_in = 0,         // input beats taken
  output reg [7:0] n_out = 0,        // output beats handed over
  output reg [OUT_BEATS*BUS-1:0] out_log = 0,
  output reg stalled = 1'b0,         // an output beat has waited at least once
  output wire done                   // input all taken, output ready for QUIET cycles
);
  wire i_ready, o_valid;
  wire [BUS-1:0] o_payload;
  wire more = n_in < NB;
  wire i_valid = i_valid_free & more;
  wire [BUS-1:0] i_payload = more ? stream[n_in*BUS +: BUS] : {BUS{1'b0}};
  ssvq_accel dut (.clk(clk), .rst(rst),
    .i_stream__payload(i_payload), .i_stream__valid(i_valid), .i_stream__ready(i_ready),
    .o_stream__payload(o_payload), .o_stream__valid(o_valid), .o_stream__ready(o_ready));

  reg i_wait = 1'b0;
  reg [7:0] quiet_in = 0, quiet_out = 0;
  always @(posedge clk) begin
    i_wait <= i_valid & ~i_ready & ~rst;
    if (i_valid & i_ready) n_in <= n_in + 1;
    if (o_valid & o_ready) begin
      if (n_out < OUT_BEATS) out_log[n_out*BUS +: BUS] <= o_payload;
      if (n_out != 8'hff) n_out <= n_out + 1;
    end
    if (o_valid & ~o_ready) stalled <= 1'b1;
    quiet_in <= (more || quiet_in == QUIET) ? (more ? 0 : quiet_in) : quiet_in + 1;
    quiet_out <= !o_ready ? 0 : (quiet_out == QUIET ? quiet_out : quiet_out + 1);
  end
  assign done = quiet_in == QUIET && quiet_out == QUIET;

  // environment: a waiting input beat stays valid (its payload is stream[n_in], and
  // n_in only moves on a taken beat, so it stays unchanged by construction)
  always @* if (i_wait) assume (i_valid_free);
endmodule

module ssvq_formal_sequence #(
  parameter BUS = 64, parameter NB = 13, parameter OUT_BEATS = 2, parameter QUIET = 24,
  parameter [NB*BUS-1:0] FIXED_MASK = 0, parameter [NB*BUS-1:0] FIXED_VAL = 0
) (
  input wire clk,
  input wire a_i_valid, input wire b_i_valid,   // free
  input wire a_o_ready                          // free: any back-pressure on A
);
  reg init = 1'b1;                   // reset in the first cycle, then never
  always @(posedge clk) init <= 1'b0;
  wire [NB*BUS-1:0] free_bits = $anyconst;
  wire [NB*BUS-1:0] stream = (free_bits & ~FIXED_MASK) | (FIXED_VAL & FIXED_MASK);

  wire [7:0] a_n, b_n;
  wire [OUT_BEATS*BUS-1:0] a_log, b_log;
  wire a_stalled, b_stalled, a_done, b_done;
  ssvq_formal_side #(.BUS(BUS), .NB(NB), .OUT_BEATS(OUT_BEATS), .QUIET(QUIET)) a (
    .clk(clk), .rst(init), .stream(stream), .i_valid_free(a_i_valid), .o_ready(a_o_ready),
    .n_out(a_n), .out_log(a_log), .stalled(a_stalled), .done(a_done));
  ssvq_formal_side #(.BUS(BUS), .NB(NB), .OUT_BEATS(OUT_BEATS), .QUIET(QUIET)) b (
    .clk(clk), .rst(init), .stream(stream), .i_valid_free(b_i_valid), .o_ready(1'b1),
    .n_out(b_n), .out_log(b_log), .stalled(b_stalled), .done(b_done));

  genvar k;
  generate for (k = 0; k < OUT_BEATS; k = k + 1) begin : beat
    always @* if (a_n > k && b_n > k) same_beat: assert (a_log[k*BUS +: BUS] == b_log[k*BUS +: BUS]);
  end endgenerate
  always @* begin
    a_no_extra_beat: assert (a_n <= OUT_BEATS);
    b_no_extra_beat: assert (b_n <= OUT_BEATS);
    if (a_done) a_all_beats: assert (a_n == OUT_BEATS);
    if (b_done) b_all_beats: assert (b_n == OUT_BEATS);
    // non-vacuity: A hands over every beat of the layer after a back-pressured wait,
    // and B has handed over all of them too (so every beat was compared)
    c_all_compared: cover (a_stalled && a_n == OUT_BEATS && b_n == OUT_BEATS);
  end
endmodule
