"""What every trainer shares: the run loop (loop), typed settings of data, optimizer, LoRA and
cadences (settings), the batch layout (batch), the optimizer, and state placement (state)."""
