"""What every job shares: the expert's clock, storage, configs as command lines, joining Ray, batch columns."""
