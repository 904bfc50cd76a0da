"""What every media kind shares: errors, content identity, the stage decorator, the kind
declaration, intake and batch runs. Nothing here names a kind."""
