"""The shard format (`format`), the records that travel to it (`records`), writing (`writer`) and reading (`reader`)."""
