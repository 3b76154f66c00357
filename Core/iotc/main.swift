print("iotc")
