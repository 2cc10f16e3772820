"""cocotb testbench for the `ssvq_accel` top module.

driver.StreamDriver      memory model feeding the input stream (latency, random gaps)
monitor.StreamMonitor    output-stream sink (random back-pressure) recording each beat
scoreboard.Scoreboard    compares beats, acceptance cycles and counters with sim.golden
test_accel               the cocotb test module; reads the job JSON named by $SSVQ_TB_JOB
                         (counters over AXI4-Lite with cocotbext-axi's AxiLiteMaster)
test_memstream           the fast stimulus (memstream.v: streams from memory, counters
                         read over AXI4-Lite by an in-Verilog read sequencer)
test_axi                 the AXI interfaces with cocotbext-axi: registers, irq, soft
                         reset, malformed streams

sim.runner builds the Verilog and runs jobs; nothing here imports Amaranth.
"""
