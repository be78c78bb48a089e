from phoenix.cli.main import main

main()
