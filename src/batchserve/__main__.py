from batchserve.cli.main import main

main()
