"""Generated gRPC stubs of protos/cm3leon/v1 (`python -m services.protos`)."""
